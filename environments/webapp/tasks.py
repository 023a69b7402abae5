"""Task templates of the shop and the checkers that judge them from the server's state
(as WebArena does): a task is done when its checker says so, whatever the page shows."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from trajforge.environments.base import ConfigError, TaskSpec
from trajforge.environments.webapp.shop import Shop

Check = Callable[[Shop], bool]
# One step of a known solution: (verb, element role, element name, text), e.g.
# ("type", "textbox", "Search", "kettle"); the environment resolves it to a ref on the page.
PlanStep = tuple[str, str, str, str]


@dataclass(frozen=True)
class ShopTask:
    template: str
    instruction: str
    fields: dict[str, str]  # values the agent may type, as MiniWoB's utterance fields
    check: Check
    plan: tuple[PlanStep, ...] = ()  # a solution from the home page: the oracle's walkthrough


def _buy_plan(name: str, query: str = "", category: str = "", max_price: str = "") -> tuple[PlanStep, ...]:
    steps: list[PlanStep] = []
    if query:
        steps.append(("type", "textbox", "Search", query))
    if max_price:
        steps.append(("type", "textbox", "Max price", max_price))
    if category:
        steps.append(("select", "select", "Category", category.title()))
    steps += [
        ("click", "button", "Search", ""),
        ("click", "link", name, ""),
        ("click", "button", "Add to cart", ""),
    ]
    return tuple(steps)


def _in_stock(shop: Shop, rng: random.Random):
    return rng.choice([p for p in shop.products if p.stock > 0])


def add_to_cart(shop: Shop, rng: random.Random) -> ShopTask:
    p = _in_stock(shop, rng)
    return ShopTask(
        "add_to_cart",
        f"Add the {p.color} {p.kind} to your cart.",
        {"query": p.kind},
        lambda s: s.cart.get(p.pid, 0) >= 1,
        _buy_plan(p.name, query=p.kind),
    )


def cheapest_in_category(shop: Shop, rng: random.Random) -> ShopTask:
    category = rng.choice(sorted({p.category for p in shop.products if p.stock > 0}))
    cheapest = min(
        (p for p in shop.products if p.category == category and p.stock > 0), key=lambda p: (p.price, p.pid)
    )
    return ShopTask(
        "cheapest_in_category",
        f"Add the cheapest item in stock in {category} to your cart.",
        {"category": category},
        lambda s: s.cart.get(cheapest.pid, 0) >= 1,
        _buy_plan(cheapest.name, category=category),
    )


def under_price(shop: Shop, rng: random.Random) -> ShopTask:
    p = _in_stock(shop, rng)
    limit = p.price + rng.randint(0, 10)
    ok = {q.pid for q in shop.products if q.kind == p.kind and q.price <= limit and q.stock > 0}
    return ShopTask(
        "under_price",
        f"Add a {p.kind} that costs at most ${limit} to your cart.",
        {"query": p.kind, "max_price": str(limit)},
        lambda s: any(s.cart.get(pid) for pid in ok),
        _buy_plan(p.name, query=p.kind, max_price=str(limit)),
    )


def buy(shop: Shop, rng: random.Random) -> ShopTask:
    p = _in_stock(shop, rng)
    name = rng.choice(["Ana Diaz", "Kim Park", "Lou Reed", "Mia Wong"])
    email = name.split()[0].lower() + "@example.org"
    address = f"{rng.randint(2, 99)} {rng.choice(['Oak', 'Elm', 'Pine'])} Road"

    def check(s: Shop) -> bool:
        return any(
            o.lines.get(p.pid) and (o.name, o.email, o.address) == (name, email, address) for o in s.orders
        )

    return ShopTask(
        "buy",
        f"Buy the {p.color} {p.kind} and ship it to {name}, {email}, {address}.",
        {"query": p.kind, "name": name, "email": email, "address": address},
        check,
        _buy_plan(p.name, query=p.kind)
        + (
            ("click", "link", "Proceed to checkout", ""),
            ("type", "textbox", "Full name", name),
            ("type", "textbox", "Email", email),
            ("type", "textbox", "Shipping address", address),
            ("click", "button", "Place order", ""),
        ),
    )


def update_email(shop: Shop, rng: random.Random) -> ShopTask:
    email = f"{rng.choice(['sam.lee', 'slee', 'samuel'])}{rng.randint(1, 99)}@example.net"
    return ShopTask(
        "update_email",
        f"Change the email address of your account to {email}.",
        {"email": email},
        lambda s: s.profile.get("email") == email,
        (
            ("click", "link", "Account", ""),
            ("type", "textbox", "Email", email),
            ("click", "button", "Save", ""),
        ),
    )


TEMPLATES: dict[str, Callable[[Shop, random.Random], ShopTask]] = {
    "add_to_cart": add_to_cart,
    "cheapest_in_category": cheapest_in_category,
    "under_price": under_price,
    "buy": buy,
    "update_email": update_email,
}


def make_task(template: str, shop: Shop, seed: int) -> ShopTask:
    return TEMPLATES[template](shop, random.Random(seed))


def chosen_templates(templates: list[str] | None) -> list[str]:
    """The `templates` option of both shops (browser and API), checked: one-line error on a bad name."""
    chosen = list(TEMPLATES if templates is None else templates)
    unknown = [t for t in chosen if t not in TEMPLATES]
    if unknown or not chosen:
        raise ConfigError(f"templates: {unknown or '[]'} invalid; choose among {', '.join(TEMPLATES)}")
    return chosen


def template_specs(templates: list[str], n: int, seed: int) -> list[TaskSpec]:
    """n tasks cycling through `templates`: the same specs for both shops and the same seed."""
    rng = random.Random(seed)
    return [TaskSpec(templates[i % len(templates)], seed=rng.randrange(2**31)) for i in range(n)]


def check_template(task: TaskSpec) -> None:
    if task.env_task not in TEMPLATES:
        raise ConfigError(
            f"env_task: {task.env_task!r} is not a shop template; use one of {', '.join(TEMPLATES)}"
        )
