"""Model-request throughput of the verifier stage and of MCTS against a latency-simulating
OpenAI-compatible server (a named fake of a GPU server: every request takes L seconds and at
most C are served at once). Ideal wall time for R requests is R*L/C.

    .venv/bin/python bench/llm_throughput.py [--latency 0.25] [--capacity 64]

Prints achieved against ideal for each stage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import apache_beam as beam
import uvicorn
from apache_beam.ml.inference.base import RunInference  # noqa: I001 - after beam, as Beam documents
from fastapi import FastAPI, Request

from trajforge.environments.toy import ToyEnvironment
from trajforge.inference.client import Choice, Response, TokenLogprob, Usage
from trajforge.inference.serve import response_body
from trajforge.pipelines.synthesis import JudgeHandler
from trajforge.schemas.records import Step, Trajectory
from trajforge.synthesizers.llm_policy import make_llm_policy
from trajforge.synthesizers.search import Budget, MCTSSettings, SearchSettings, search


def fake_app(latency: float, capacity: int) -> FastAPI:
    """Answers after `latency` seconds, `capacity` at a time; counts requests at GET /stats."""
    app, state = FastAPI(), {"requests": 0}
    slots = asyncio.Semaphore(capacity)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict:
        body = await request.json()
        async with slots:
            state["requests"] += 1
            await asyncio.sleep(latency)
        words = body["messages"][-1]["content"].split() or [""]
        # Prompt logprobs: a made-up but deterministic likelihood of each word of the last turn.
        prompt = [None] + [TokenLogprob(w, -0.1 * len(w)) for w in words]
        choices = (body.get("structured_outputs") or {}).get("choice") or ["Action: go east"]
        return response_body(
            Response([Choice(choices[0], "stop")], Usage(len(words), 3), "fake", prompt), chat=True
        )

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": "fake", "object": "model"}]}

    @app.get("/stats")
    async def stats() -> dict:
        return state

    return app


class FakeGPUServer:
    """The fake in its own process, as a GPU server is on its own machine."""

    def __init__(self, latency: float, capacity: int) -> None:
        self.latency, self.capacity = latency, capacity

    def __enter__(self) -> FakeGPUServer:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                str(self.port),
                "--latency",
                str(self.latency),
                "--capacity",
                str(self.capacity),
            ],
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/models", timeout=1).close()
                return self
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("the fake server did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=5) as resp:
            return json.loads(resp.read())["requests"]

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def verifier_stage(url: str, n: int, cache: Path) -> int:
    rows = [
        Trajectory(
            trajectory_id=f"t{i}",
            task_id="task",
            env="toy",
            instruction="open the door",
            search="rollout",
            policy="random",
            steps=[Step(index=0, observation=f"room {i}", action="go east")],
            num_steps=1,
            total_reward=0.0,
            success=False,
        ).row()
        for i in range(n)
    ]
    with beam.Pipeline(argv=["--runner=FnApiRunner"]) as p:
        _ = p | beam.Create(rows) | RunInference(JudgeHandler(f"openai:{url}#fake", {"cache_dir": None}))
    return 2 * n  # "yes" and "no" are scored by one request each


def mcts_searches(url: str, searches: int, simulations: int) -> int:
    settings = SearchSettings(
        "mcts", 8, 1, Budget(env_steps=10**6, simulations=simulations), MCTSSettings(rollout_depth=1)
    )
    made = [0] * searches

    def one(i: int) -> None:
        policy = make_llm_policy(f"openai:{url}#fake")
        search(ToyEnvironment(), ToyEnvironment().task_specs(1, i)[0], policy, settings, seed=i)
        made[i] = policy.client.stats()["calls"]
        policy.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(searches)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(made)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--latency", type=float, default=0.25)
    ap.add_argument("--capacity", type=int, default=64)
    ap.add_argument("--trajectories", type=int, default=1024)
    ap.add_argument("--searches", type=int, default=64)
    ap.add_argument("--simulations", type=int, default=10)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # run the fake server on this port
    args = ap.parse_args()
    if args.serve:
        uvicorn.run(
            fake_app(args.latency, args.capacity),
            host="127.0.0.1",
            port=args.serve,
            log_level="error",
            backlog=2048,
            limit_concurrency=10_000,
        )
        return
    cache = Path(tempfile.mkdtemp(prefix="trajforge-bench-"))
    print(f"\nmodel throughput: latency {args.latency}s, capacity {args.capacity} concurrent requests")
    print(f"{'stage':<30}{'requests':>9}{'ideal s':>9}{'achieved s':>11}{'ratio':>7}")
    try:
        for name, fn in [
            (
                f"verifier ({args.trajectories} traj)",
                lambda url: verifier_stage(url, args.trajectories, cache),
            ),
            (
                f"mcts ({args.searches} searches)",
                lambda url: mcts_searches(url, args.searches, args.simulations),
            ),
        ]:
            with FakeGPUServer(args.latency, args.capacity) as server:
                t0 = time.perf_counter()
                fn(server.url)
                wall = time.perf_counter() - t0
                requests = server.requests
            ideal = requests * args.latency / args.capacity
            print(f"{name:<30}{requests:>9}{ideal:>9.2f}{wall:>11.2f}{wall / ideal:>6.2f}x")
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
