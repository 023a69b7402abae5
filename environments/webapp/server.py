"""The shop's web server: plain HTML forms over the standard library, on 127.0.0.1 only.

Pages: / (search and categories), /search, /product/N, /cart, /checkout, /order/N, /account.
State changes are POSTs answered with a redirect (post/redirect/get), as real shops do.
"""

from __future__ import annotations

import html
import threading
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlparse

from trajforge.environments.loopback import LoopbackServer
from trajforge.environments.webapp.shop import KINDS, Shop

STYLE = "body{font-family:sans-serif;margin:1em} nav a{margin-right:1em} .error{color:#b00}"


def _e(text: object) -> str:
    return html.escape(str(text))


class ShopServer:
    """One shop behind one HTTP server. `reset(seed)` starts a fresh shop for an episode."""

    def __init__(self, seed: int = 0) -> None:
        self.lock = threading.Lock()
        self.shop = Shop.seeded(seed)
        self.http = LoopbackServer(type("Handler", (_Handler,), {"app": self}), name="shop-server")
        self.origin = self.http.origin

    def reset(self, seed: int) -> Shop:
        with self.lock:
            self.shop = Shop.seeded(seed)
            return self.shop

    def close(self) -> None:
        self.http.close()


class _Handler(BaseHTTPRequestHandler):
    app: ShopServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    # -- plumbing ---------------------------------------------------------------------------
    def _send(self, status: int, body: str, headers: dict[str, str] | None = None) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _redirect(self, location: str) -> None:
        self._send(303, "", {"Location": location})

    def _page(self, title: str, body: str, status: int = 200) -> None:
        shop = self.app.shop
        count = sum(shop.cart.values())
        nav = (
            f'<nav><a href="/">Home</a><a href="/cart">Cart ({count})</a><a href="/account">Account</a></nav>'
        )
        self._send(
            status,
            f"<!doctype html><html><head><title>{_e(title)} - Shop</title><style>{STYLE}</style>"
            f"</head><body>{nav}<main><h1>{_e(title)}</h1>{body}</main></body></html>",
        )

    def _form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        fields = parse_qs(self.rfile.read(length).decode(), keep_blank_values=True)
        return {k: v[0] for k, v in fields.items()}

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        parts = [p for p in url.path.split("/") if p]
        with self.app.lock:
            route = {
                "": self._home,
                "search": self._search,
                "cart": self._cart,
                "checkout": self._checkout,
                "account": self._account,
            }.get(parts[0] if parts else "")
            if route is not None and len(parts) <= 1:
                return route(query)
            if len(parts) == 2 and parts[0] in ("product", "order") and parts[1].isdigit():
                return (self._product if parts[0] == "product" else self._order)(int(parts[1]), query)
            self._page("Not found", "<p>There is no such page.</p>", 404)

    def do_POST(self) -> None:  # noqa: N802
        form = self._form()
        with self.app.lock:
            action = {
                "/cart/add": self._add,
                "/cart/remove": self._remove,
                "/checkout": self._place,
                "/account": self._save,
            }.get(urlparse(self.path).path)
            if action is None:
                return self._page("Not found", "<p>There is no such page.</p>", 404)
            action(form)

    # -- pages ------------------------------------------------------------------------------
    def _search_form(self, q: str = "", category: str = "", max_price: str = "") -> str:
        options = "".join(
            f'<option value="{c}"{" selected" if c == category else ""}>{c.title()}</option>'
            for c in sorted(KINDS)
        )
        return (
            f'<form action="/search" method="get" role="search">'
            f'<label>Search <input name="q" value="{_e(q)}"></label> '
            f'<label>Category <select name="category"><option value="">All</option>{options}'
            "</select></label> "
            f'<label>Max price <input name="max_price" type="number" min="0" value="{_e(max_price)}">'
            "</label> "
            f'<button type="submit">Search</button></form>'
        )

    def _home(self, query: dict) -> None:
        cats = "".join(f'<li><a href="/search?category={c}">{c.title()}</a></li>' for c in sorted(KINDS))
        self._page("Welcome", self._search_form() + f"<h2>Categories</h2><ul>{cats}</ul>")

    def _search(self, query: dict) -> None:
        q, category, max_price = query.get("q", ""), query.get("category", ""), query.get("max_price", "")
        limit = int(max_price) if max_price.isdigit() else None
        hits = self.app.shop.search(q, category, limit)
        items = "".join(f'<li><a href="/product/{p.pid}">{_e(p.name)}</a> ${p.price}</li>' for p in hits)
        body = self._search_form(q, category, max_price)
        body += f"<p>{len(hits)} results</p><ul>{items}</ul>" if hits else "<p>No products match.</p>"
        self._page("Search results", body)

    def _product(self, pid: int, query: dict) -> None:
        p = self.app.shop.product(pid)
        if p is None:
            return self._page("Not found", "<p>There is no such product.</p>", 404)
        error = f'<p class="error" role="alert">{_e(query["error"])}</p>' if query.get("error") else ""
        self._page(
            p.name,
            f"<p>{p.color.title()} {p.kind} in {p.category}. Price: ${p.price}. "
            f"In stock: {p.stock}.</p>{error}"
            f'<form action="/cart/add" method="post"><input type="hidden" name="pid" value="{pid}">'
            f'<label>Quantity <input name="quantity" type="number" min="1" value="1"></label> '
            f'<button type="submit">Add to cart</button></form>',
        )

    def _cart(self, query: dict) -> None:
        shop = self.app.shop
        if not shop.cart:
            return self._page("Your cart", '<p>Your cart is empty.</p><a href="/">Continue shopping</a>')
        rows = "".join(
            f"<li>{_e(shop.product(pid).name)} x {q} "  # type: ignore[union-attr]
            f'<form action="/cart/remove" method="post" style="display:inline">'
            f'<input type="hidden" name="pid" value="{pid}"><button type="submit">Remove '
            f"{_e(shop.product(pid).name)}</button></form></li>"  # type: ignore[union-attr]
            for pid, q in sorted(shop.cart.items())
        )
        self._page(
            "Your cart",
            f'<ul>{rows}</ul><p>Total: ${shop.cart_total()}</p><a href="/checkout">Proceed to checkout</a>',
        )

    def _checkout_form(self, errors: list[str], form: dict) -> str:
        errs = "".join(f'<li class="error">{_e(e)}</li>' for e in errors)
        alert = f'<ul role="alert">{errs}</ul>' if errs else ""
        fields = "".join(
            f'<p><label>{label} <input name="{name}" value="{_e(form.get(name, ""))}"></label></p>'
            for name, label in (("name", "Full name"), ("email", "Email"), ("address", "Shipping address"))
        )
        button = '<button type="submit">Place order</button>'
        return f'{alert}<form action="/checkout" method="post">{fields}{button}</form>'

    def _checkout(self, query: dict) -> None:
        self._page("Checkout", f"<p>Total: ${self.app.shop.cart_total()}</p>" + self._checkout_form([], {}))

    def _order(self, oid: int, query: dict) -> None:
        order = next((o for o in self.app.shop.orders if o.oid == oid), None)
        if order is None:
            return self._page("Not found", "<p>There is no such order.</p>", 404)
        self._page(
            f"Order {oid} confirmed",
            f"<p>Thank you, {_e(order.name)}. Total: ${order.total}. Shipping to {_e(order.address)}.</p>",
        )

    def _account(self, query: dict) -> None:
        shop = self.app.shop
        saved = '<p role="status">Saved.</p>' if query.get("saved") else ""
        error = f'<p class="error" role="alert">{_e(query["error"])}</p>' if query.get("error") else ""
        fields = "".join(
            f'<p><label>{label} <input name="{name}" value="{_e(shop.profile.get(name, ""))}"></label></p>'
            for name, label in (("name", "Full name"), ("email", "Email"), ("address", "Address"))
        )
        orders = "".join(
            f'<li><a href="/order/{o.oid}">Order {o.oid}</a> ${o.total}</li>' for o in shop.orders
        )
        self._page(
            "Your account",
            f'{saved}{error}<form action="/account" method="post">{fields}'
            f'<button type="submit">Save</button></form>'
            f"<h2>Orders</h2><ul>{orders or '<li>No orders yet.</li>'}</ul>",
        )

    # -- actions ----------------------------------------------------------------------------
    def _add(self, form: dict) -> None:
        pid = int(form.get("pid", "0") or 0)
        qty = form.get("quantity", "1")
        error = self.app.shop.add_to_cart(pid, int(qty) if qty.lstrip("-").isdigit() else 0)
        self._redirect(f"/product/{pid}?error={error}" if error else "/cart")

    def _remove(self, form: dict) -> None:
        self.app.shop.cart.pop(int(form.get("pid", "0") or 0), None)
        self._redirect("/cart")

    def _place(self, form: dict) -> None:
        order, errors = self.app.shop.checkout(
            form.get("name", ""), form.get("email", ""), form.get("address", "")
        )
        if order is None:
            return self._page("Checkout", self._checkout_form(errors, form), 400)
        self._redirect(f"/order/{order.oid}")

    def _save(self, form: dict) -> None:
        errors = self.app.shop.update_profile(
            form.get("name", ""), form.get("email", ""), form.get("address", "")
        )
        self._redirect("/account?error=" + errors[0] if errors else "/account?saved=1")
