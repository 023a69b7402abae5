"""The built-in shop over real HTTP: pages, validation errors, and state checkers."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request

import pytest

from trajforge.environments.webapp.server import ShopServer
from trajforge.environments.webapp.tasks import TEMPLATES, make_task


@pytest.fixture
def server():
    s = ShopServer(seed=11)
    yield s
    s.close()


def get(server: ShopServer, path: str) -> str:
    with urllib.request.urlopen(server.origin + path, timeout=5) as resp:
        return resp.read().decode()


def post(server: ShopServer, path: str, **form) -> tuple[int, str, str]:
    data = urllib.parse.urlencode(form).encode()
    try:
        with urllib.request.urlopen(server.origin + path, data=data, timeout=5) as resp:
            return resp.status, resp.url, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.url, err.read().decode()


def test_catalogue_is_seeded():
    from trajforge.environments.webapp.shop import Shop

    assert Shop.seeded(3).products == Shop.seeded(3).products != Shop.seeded(4).products


def test_search_filters_by_words_category_and_price(server):
    shop = server.shop
    bag = next(p for p in shop.products if p.category == "bags")
    page = get(server, f"/search?q={urllib.parse.quote(bag.kind)}&category=bags&max_price={bag.price}")
    assert bag.name in page
    assert all(p.name not in page for p in shop.products if p.category != "bags")


def test_cart_refuses_more_than_stock(server):
    product = next(p for p in server.shop.products if p.stock > 0)
    status, url, page = post(server, "/cart/add", pid=product.pid, quantity=product.stock + 1)
    assert f"/product/{product.pid}" in url and f"Only {product.stock} in stock." in page
    assert server.shop.cart == {}


def test_checkout_shows_validation_errors_then_places_the_order(server):
    product = next(p for p in server.shop.products if p.stock > 0)
    post(server, "/cart/add", pid=product.pid, quantity=1)
    status, _, page = post(server, "/checkout", name="", email="not-an-email", address="")
    assert status == 400 and "Enter a valid email address." in page and "Name is required." in page
    status, url, page = post(server, "/checkout", name="Ana", email="ana@example.org", address="2 Oak Road")
    assert "/order/1" in url and "Order 1 confirmed" in page
    assert server.shop.cart == {} and server.shop.orders[0].lines == {product.pid: 1}


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_each_template_is_judged_by_state(server, template):
    shop = server.reset(5)
    task = make_task(template, shop, seed=9)
    assert task.instruction and not task.check(shop)
    solve_by_http(server, task)
    assert task.check(server.shop)
    server.reset(5)
    assert not task.check(server.shop)


def solve_by_http(server: ShopServer, task) -> None:
    """What a competent agent does, as raw form posts."""
    shop = server.shop
    f = task.fields
    if task.template == "update_email":
        post(server, "/account", name=shop.profile["name"], email=f["email"], address=shop.profile["address"])
        return
    if task.template == "cheapest_in_category":
        target = shop.search(category=f["category"])
        target = next(p for p in target if p.stock > 0)
    elif task.template == "under_price":
        target = next(p for p in shop.search(f["query"], "", int(f["max_price"])) if p.stock > 0)
    else:
        words = task.instruction.split(" and ")[0].split("the ", 1)[1].rstrip(".").split(" to ")[0]
        target = next(p for p in shop.search(words) if p.stock > 0)
    post(server, "/cart/add", pid=target.pid, quantity=1)
    if task.template == "buy":
        post(server, "/checkout", name=f["name"], email=f["email"], address=f["address"])
