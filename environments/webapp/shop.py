"""The shop's state and its seeded catalogue: plain Python, so checkers read it directly."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

COLORS = ["red", "blue", "green", "black", "white", "yellow"]
KINDS = {
    "shoes": ["sneakers", "boots", "sandals"],
    "bags": ["backpack", "tote", "duffel"],
    "kitchen": ["kettle", "teapot", "mug"],
    "garden": ["shovel", "watering can", "hose"],
}
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$")


@dataclass(frozen=True)
class Product:
    pid: int
    name: str
    category: str
    kind: str
    color: str
    price: int  # whole dollars
    stock: int


@dataclass
class Order:
    oid: int
    lines: dict[int, int]  # product id -> quantity
    name: str
    email: str
    address: str
    total: int


@dataclass
class Shop:
    """Everything the server changes. One shop per episode; reset() makes it anew."""

    seed: int
    products: list[Product] = field(default_factory=list)
    cart: dict[int, int] = field(default_factory=dict)
    orders: list[Order] = field(default_factory=list)
    profile: dict[str, str] = field(default_factory=dict)

    @classmethod
    def seeded(cls, seed: int, size: int = 24) -> Shop:
        rng = random.Random(seed)
        products, seen = [], set()
        while len(products) < size:
            category = rng.choice(sorted(KINDS))
            kind, color = rng.choice(KINDS[category]), rng.choice(COLORS)
            if (kind, color) in seen:
                continue
            seen.add((kind, color))
            name = f"{color.title()} {kind.title()}"
            products.append(
                Product(
                    len(products) + 1, name, category, kind, color, rng.randint(5, 200), rng.randint(0, 5)
                )
            )
        profile = {"name": "Sam Lee", "email": "sam@example.com", "address": "1 Main St"}
        return cls(seed=seed, products=products, profile=profile)

    def product(self, pid: int) -> Product | None:
        return next((p for p in self.products if p.pid == pid), None)

    def search(self, query: str = "", category: str = "", max_price: int | None = None) -> list[Product]:
        words = query.lower().split()
        hits = [
            p
            for p in self.products
            if all(w in p.name.lower() for w in words)
            and (not category or p.category == category)
            and (max_price is None or p.price <= max_price)
        ]
        return sorted(hits, key=lambda p: (p.price, p.pid))

    def add_to_cart(self, pid: int, quantity: int) -> str | None:
        """None on success, else the error the page shows."""
        product = self.product(pid)
        if product is None:
            return "No such product."
        if quantity < 1:
            return "Quantity must be at least 1."
        if self.cart.get(pid, 0) + quantity > product.stock:
            return f"Only {product.stock} in stock."
        self.cart[pid] = self.cart.get(pid, 0) + quantity
        return None

    def cart_total(self) -> int:
        return sum(self.product(pid).price * q for pid, q in self.cart.items())  # type: ignore[union-attr]

    def checkout(self, name: str, email: str, address: str) -> tuple[Order | None, list[str]]:
        errors = []
        if not self.cart:
            errors.append("Your cart is empty.")
        if not name.strip():
            errors.append("Name is required.")
        if not EMAIL.match(email.strip()):
            errors.append("Enter a valid email address.")
        if not address.strip():
            errors.append("Address is required.")
        if errors:
            return None, errors
        order = Order(
            len(self.orders) + 1,
            dict(self.cart),
            name.strip(),
            email.strip(),
            address.strip(),
            self.cart_total(),
        )
        self.orders.append(order)
        self.cart.clear()
        return order, []

    def update_profile(self, name: str, email: str, address: str) -> list[str]:
        errors = [] if EMAIL.match(email.strip()) else ["Enter a valid email address."]
        if not errors:
            self.profile = {"name": name.strip(), "email": email.strip(), "address": address.strip()}
        return errors
