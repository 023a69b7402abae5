"""The shop's side of the goal contract (environments.goals): its predicate kinds, the facts of
a shop's state, and the values an instance holds (its catalogue, contacts, price bounds)."""

from __future__ import annotations

import math
import random

from trajforge.environments.goals import Fact, PredicateKind, SlotAbsent, Template
from trajforge.environments.webapp.shop import COLORS, Product, Shop
from trajforge.environments.webapp.shop import KINDS as KIND_NAMES

KINDS: tuple[PredicateKind, ...] = (
    PredicateKind(
        "in_cart",
        ("product",),
        ("Add the {0} to your cart.", "Put the {0} in your shopping cart.", "Get the {0} into your cart."),
    ),
    PredicateKind(
        "in_cart_qty",
        ("product", "quantity"),
        ("Have at least {1} of the {0} in your cart.", "Put {1} or more units of the {0} in your cart."),
    ),
    PredicateKind(
        "not_in_cart",
        ("product",),
        ("Remove the {0} from your cart.", "Make sure the {0} is no longer in your cart."),
    ),
    PredicateKind(
        "ordered",
        ("product",),
        ("Buy the {0}.", "Place an order that includes the {0}."),
    ),
    PredicateKind(
        "order_name",
        ("name",),
        ("Place an order for {0}.", "Check out with {0} as the full name."),
    ),
    PredicateKind(
        "order_email",
        ("email",),
        ("Place an order with the email {0}.", "Check out using the email address {0}."),
    ),
    PredicateKind(
        "order_address",
        ("address",),
        ("Place an order shipped to {0}.", "Check out with the shipping address {0}."),
    ),
    PredicateKind(
        "profile_email",
        ("email",),
        ("Change your account's email to {0}.", "Set the email address of your account to {0}."),
    ),
    PredicateKind(
        "profile_name",
        ("name",),
        ("Change your account's name to {0}.", "Set the full name on your account to {0}."),
    ),
    PredicateKind(
        "profile_address",
        ("address",),
        ("Change your account's address to {0}.", "Set the address on your account to {0}."),
    ),
    PredicateKind(
        "cart_total_at_most",
        ("bound",),
        (
            "Fill your cart so that its total is at most ${0}.",
            "Have items in your cart totalling no more than ${0}.",
        ),
    ),
    PredicateKind(
        "cart_lines_at_least",
        ("count",),
        (
            "Have at least {0} different products in your cart.",
            "Put {0} or more distinct items in your cart.",
        ),
    ),
)

NAMES = ["Ana Diaz", "Kim Park", "Lou Reed", "Mia Wong", "Raj Patel", "Eva Stone"]
STREETS = ["Oak Road", "Elm Street", "Pine Avenue", "Birch Lane"]


def product_value(shop: Shop, pid: int) -> str:
    p = shop.product(pid)
    return p.name.lower() if p else f"product {pid}"


def contacts(shop: Shop) -> dict[str, list[str]]:
    """Two contacts of this instance (seeded by it) besides the account's own."""
    rng = random.Random(f"contacts:{shop.seed}")
    names = rng.sample(NAMES, 2)
    emails = [n.split()[0].lower() + f"{rng.randint(1, 99)}@example.org" for n in names]
    addresses = [f"{rng.randint(2, 99)} {rng.choice(STREETS)}" for _ in names]
    return {"name": names, "email": emails, "address": addresses}


def bounds(shop: Shop) -> list[int]:
    """Price bounds of this instance: its prices rounded up to 25, and doubled."""
    levels = {25 * math.ceil(p.price / 25) for p in shop.products}
    return sorted(levels | {2 * b for b in levels})


def slot_values(shop: Shop) -> dict[str, list[str]]:
    c = contacts(shop)
    return {
        "product": [p.name.lower() for p in shop.products],
        "quantity": ["2", "3"],
        "name": c["name"] + [shop.profile.get("name", "")],
        "email": c["email"] + [shop.profile.get("email", "")],
        "address": c["address"] + [shop.profile.get("address", "")],
        "bound": [str(b) for b in bounds(shop)],
        "count": ["2", "3"],
    }


def typeable_values(shop: Shop) -> list[str]:
    c = contacts(shop)
    kinds = sorted({p.kind for p in shop.products})
    return [*kinds, "2", *c["name"], *c["email"], *c["address"]]


def facts(shop: Shop) -> frozenset[Fact]:
    out: set[Fact] = set()
    for p in shop.products:
        name, qty = p.name.lower(), shop.cart.get(p.pid, 0)
        if qty:
            out.add(("in_cart", name))
            out.update(("in_cart_qty", name, str(n)) for n in range(2, min(qty, 3) + 1))
        else:
            out.add(("not_in_cart", name))
    for order in shop.orders:
        out.update(("ordered", product_value(shop, pid)) for pid in order.lines)
        out.update(
            {("order_name", order.name), ("order_email", order.email), ("order_address", order.address)}
        )
    for key in ("name", "email", "address"):
        if shop.profile.get(key):
            out.add((f"profile_{key}", shop.profile[key]))
    if shop.cart:
        total = shop.cart_total()
        out.update(("cart_total_at_most", str(b)) for b in bounds(shop) if total <= b)
        out.update(("cart_lines_at_least", str(n)) for n in (2, 3) if len(shop.cart) >= n)
    return frozenset(out)


def templates(shop: Shop, names: list[str]) -> dict[str, Template]:
    """The goal forms of the shop's templates (WebAppEnvironment's `templates` option names
    which), filled only from this shop."""

    def in_stock(rng: random.Random) -> Product:
        stocked = [p for p in shop.products if p.stock > 0]
        if not stocked:
            raise SlotAbsent("product: nothing in stock")
        return rng.choice(stocked)

    def add_to_cart(rng: random.Random) -> list[Fact]:
        return [("in_cart", in_stock(rng).name.lower())]

    def cheapest_in_category(rng: random.Random) -> list[Fact]:
        cats = sorted({p.category for p in shop.products if p.stock > 0})
        if not cats:
            raise SlotAbsent("category: no category has stock")
        cat = rng.choice(cats)
        p = min(
            (p for p in shop.products if p.category == cat and p.stock > 0), key=lambda p: (p.price, p.pid)
        )
        return [("in_cart", p.name.lower())]

    def under_price(rng: random.Random) -> list[Fact]:
        p = in_stock(rng)
        bound = min(b for b in bounds(shop) if b >= p.price)
        return [("in_cart", p.name.lower()), ("cart_total_at_most", str(bound))]

    def buy(rng: random.Random) -> list[Fact]:
        return [("ordered", in_stock(rng).name.lower()), ("order_email", rng.choice(contacts(shop)["email"]))]

    def update_email(rng: random.Random) -> list[Fact]:
        return [("profile_email", rng.choice(contacts(shop)["email"]))]

    forms = {
        "add_to_cart": add_to_cart,
        "cheapest_in_category": cheapest_in_category,
        "under_price": under_price,
        "buy": buy,
        "update_email": update_email,
    }
    return {name: forms[name] for name in names}


def vocabulary() -> dict[str, list[str]]:
    """Slot values of any shop (the naive arm of bench/tasks.py draws from these)."""
    products = [f"{c} {k}" for c in COLORS for ks in KIND_NAMES.values() for k in ks]
    emails = [n.split()[0].lower() + "@example.org" for n in NAMES]
    return {
        "product": products,
        "quantity": ["2", "3", "5"],
        "name": NAMES,
        "email": emails,
        "address": [f"{n} {s}" for n in (1, 12, 40) for s in STREETS],
        "bound": ["25", "50", "100", "200"],
        "count": ["2", "3", "4"],
    }
