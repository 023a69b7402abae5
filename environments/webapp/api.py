"""`shop-api`: the built-in shop's operations as tools (function calling), over the same state
(webapp/shop.py: the Shop the web server's handlers change) and the same task templates and
checkers (webapp/tasks.py) as the browser shop, so one task can be done by a browser agent and by
a tool agent and be judged the same way (as tau-bench and WebArena's API tasks do).

Actions are calls (schemas.toolcalls), checked against each tool's JSON schema; results are JSON.
Admissible actions are calls sampled from the catalogue and the task's values (searches, the
products the last search showed, the cart, the account), so searches work without a model. The
walkthrough is the template's known solution, translated from page steps to calls. The state is
plain Python: a snapshot is a copy (~0.1 ms), so MCTS branches without replay."""

from __future__ import annotations

import copy
import json
from typing import Any

from trajforge.environments.base import ConfigError, Reset, StepOutcome, TaskSpec
from trajforge.environments.tools import InvalidCall, check_call, function, invalid_outcome
from trajforge.environments.webapp.shop import KINDS, Shop
from trajforge.environments.webapp.tasks import (
    ShopTask,
    check_template,
    chosen_templates,
    make_task,
    template_specs,
)
from trajforge.schemas.toolcalls import encode_call

_ID = {"type": "integer", "minimum": 1, "description": "a product's id, as search_products shows it"}
_TEXT = {"type": "string"}
TOOLS = [
    function(
        "search_products",
        "Search the catalogue by words of the name, category and highest price; cheapest first.",
        {
            "query": {"type": "string", "description": "words that must all appear in the name"},
            "category": {"type": "string", "enum": sorted(KINDS)},
            "max_price": {"type": "integer", "minimum": 0, "description": "in whole dollars"},
        },
    ),
    function(
        "get_product",
        "A product's details: color, kind, category, price, stock.",
        {"product_id": _ID},
        ["product_id"],
    ),
    function(
        "add_to_cart",
        "Put a quantity of a product in the cart (no more than its stock).",
        {"product_id": _ID, "quantity": {"type": "integer", "minimum": 1, "default": 1}},
        ["product_id"],
    ),
    function("remove_from_cart", "Take a product out of the cart.", {"product_id": _ID}, ["product_id"]),
    function("view_cart", "The cart's lines and total.", {}),
    function(
        "checkout",
        "Place an order for the whole cart, shipped to the given contact.",
        {"name": _TEXT, "email": _TEXT, "address": {"type": "string", "description": "shipping address"}},
        ["name", "email", "address"],
    ),
    function("get_account", "The account's profile and its orders.", {}),
    function(
        "update_account",
        "Change the account's profile; fields left out keep their value.",
        {"name": _TEXT, "email": _TEXT, "address": _TEXT},
        ["email"],
    ),
]


class ShopApiEnvironment:
    name = "shop-api"
    supports_snapshot = True
    tools = TOOLS
    # Steps are cheap (a copy of the state): a bigger budget than a browser run gets.
    run_defaults: dict[str, Any] = {
        "max_steps": 8,
        "budget": {"env_steps": 1500},
        "mcts": {"rollout_depth": 3},
    }

    def __init__(self, templates: list[str] | None = None) -> None:
        self.templates = chosen_templates(templates)
        self.shop = Shop.seeded(0)
        self.task: ShopTask | None = None
        self._shown: list[int] = []  # product ids the last search or lookup showed
        self._plan: list[str] = []
        self._plan_pos: int | None = 0  # calls of the plan made so far; None once the agent left it
        self._done = False

    def task_specs(self, n: int, seed: int) -> list[TaskSpec]:
        return template_specs(self.templates, n, seed)

    def reset(self, task: TaskSpec) -> Reset:
        check_template(task)
        self.shop = Shop.seeded(task.seed)
        self.task = make_task(task.env_task, self.shop, task.seed)
        self._shown, self._plan, self._plan_pos, self._done = [], api_plan(self.task, self.shop), 0, False
        observation = (
            f"You are signed in to the shop as {self.shop.profile['name']}. "
            f"Call its tools ({', '.join(t['function']['name'] for t in TOOLS)}) to do the task."
        )
        return Reset(observation, self.task.instruction)

    def step(self, action: str) -> StepOutcome:
        if self.task is None or self._done:
            raise ConfigError("step: the episode is over or never began; call reset first")
        try:
            call = check_call(TOOLS, action)
        except InvalidCall as exc:
            self._plan_pos = None
            return invalid_outcome(exc)
        on_plan = self._plan_pos is not None and self._plan[self._plan_pos : self._plan_pos + 1] == [action]
        self._plan_pos = self._plan_pos + 1 if on_plan and self._plan_pos is not None else None
        result = getattr(self, "_" + call.name)(**call.arguments)
        observation = json.dumps(result, sort_keys=True)
        if self.task.check(self.shop):
            self._done = True
            return StepOutcome(observation, 1.0, True, True, {"checker": "passed"})
        if self.shop.orders:  # an order is final: a wrong one fails the task, as in the browser shop
            self._done = True
            return StepOutcome(observation, 0.0, True, False, {"checker": "wrong order placed"})
        return StepOutcome(observation, 0.0, False, None)

    # -- the tools: the same Shop methods the web server's handlers call ----------------------
    def _search_products(self, query: str = "", category: str = "", max_price: int | None = None) -> dict:
        hits = self.shop.search(query, category, max_price)
        self._shown = [p.pid for p in hits]
        return {
            "count": len(hits),
            "results": [{"product_id": p.pid, "name": p.name, "price": p.price} for p in hits],
        }

    def _get_product(self, product_id: int) -> dict:
        p = self.shop.product(product_id)
        if p is None:
            return {"error": "No such product."}
        self._shown = [p.pid]
        fields = ("name", "category", "kind", "color", "price", "stock")
        return {"product_id": p.pid, **{f: getattr(p, f) for f in fields}}

    def _add_to_cart(self, product_id: int, quantity: int = 1) -> dict:
        error = self.shop.add_to_cart(product_id, quantity)
        return {"error": error} if error else self._view_cart()

    def _remove_from_cart(self, product_id: int) -> dict:
        self.shop.cart.pop(product_id, None)
        return self._view_cart()

    def _view_cart(self) -> dict:
        lines = [
            {"product_id": pid, "name": self.shop.product(pid).name, "quantity": q}  # type: ignore[union-attr]
            for pid, q in sorted(self.shop.cart.items())
        ]
        return {"lines": lines, "total": self.shop.cart_total()}

    def _checkout(self, name: str, email: str, address: str) -> dict:
        order, errors = self.shop.checkout(name, email, address)
        return {"errors": errors} if order is None else {"order_id": order.oid, "total": order.total}

    def _get_account(self) -> dict:
        orders = [{"order_id": o.oid, "total": o.total} for o in self.shop.orders]
        return {"profile": dict(self.shop.profile), "orders": orders}

    def _update_account(self, email: str, name: str | None = None, address: str | None = None) -> dict:
        profile = self.shop.profile
        errors = self.shop.update_profile(
            profile.get("name", "") if name is None else name,
            email,
            profile.get("address", "") if address is None else address,
        )
        return {"errors": errors} if errors else {"profile": dict(self.shop.profile)}

    # -- search without a model --------------------------------------------------------------
    def admissible_actions(self) -> list[str]:
        """Calls sampled from the catalogue and the task's values (as the browser shop's typing
        actions take the task's values): searches, the shown products, the cart, the account."""
        if self.task is None or self._done:
            return []
        fields = self.task.fields
        calls: list[tuple[str, dict]] = [("search_products", {"category": c}) for c in sorted(KINDS)]
        if "query" in fields:
            calls.append(("search_products", {"query": fields["query"]}))
            if fields.get("max_price", "").isdigit():
                calls.append(
                    ("search_products", {"query": fields["query"], "max_price": int(fields["max_price"])})
                )
        for pid in self._shown[:6]:  # a kind has at most six colors: a search by kind shows all
            calls += [
                ("get_product", {"product_id": pid}),
                ("add_to_cart", {"product_id": pid, "quantity": 1}),
            ]
        calls += [("view_cart", {}), ("get_account", {})]
        if self.shop.cart and {"name", "email", "address"} <= set(fields):
            contact = {k: fields[k] for k in ("name", "email", "address")}
            calls.append(("checkout", contact))
        elif "email" in fields:
            calls.append(("update_account", {"email": fields["email"]}))
        return [encode_call(name, args) for name, args in calls]

    def walkthrough(self) -> list[str] | None:
        if self.task is None or self._done or self._plan_pos is None:
            return None
        return self._plan[self._plan_pos :] or None

    def snapshot(self) -> Any:
        return copy.deepcopy((self.shop, self._shown, self._plan_pos, self._done))

    def restore(self, state: Any) -> None:
        self.shop, self._shown, self._plan_pos, self._done = copy.deepcopy(state)

    def close(self) -> None:
        pass


def api_plan(task: ShopTask, shop: Shop) -> list[str]:
    """The template's known solution (page steps: type into Search, click a product's link, ...)
    as calls: the same solution, through the API."""
    calls: list[str] = []
    search: dict[str, Any] = {}
    contact: dict[str, str] = {}
    by_name = {p.name: p.pid for p in shop.products}
    pid = 0
    for verb, role, name, text in task.plan:
        if verb == "type" and name == "Search":
            search["query"] = text
        elif verb == "type" and name == "Max price":
            search["max_price"] = int(text)
        elif verb == "select" and name == "Category":
            search["category"] = text.lower()
        elif verb == "click" and role == "button" and name == "Search":
            calls.append(encode_call("search_products", search))
        elif verb == "click" and role == "link" and name in by_name:
            pid = by_name[name]
            calls.append(encode_call("get_product", {"product_id": pid}))
        elif verb == "click" and name == "Add to cart":
            calls.append(encode_call("add_to_cart", {"product_id": pid, "quantity": 1}))
        elif verb == "type":
            contact[{"Full name": "name", "Shipping address": "address"}.get(name, name.lower())] = text
        elif verb == "click" and name == "Place order":
            calls.append(encode_call("checkout", contact))
        elif verb == "click" and name == "Save":
            calls.append(encode_call("update_account", contact))
    return calls
