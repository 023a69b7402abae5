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
import socket
import subprocess
import sys
import time
import urllib.request

import apache_beam as beam
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from trajforge.environments.toy import ToyEnvironment
from trajforge.inference.client import Choice, Response, TokenLogprob, Usage
from trajforge.inference.wire import response_body
from trajforge.pipelines.judging import Judge
from trajforge.pipelines.spec import PipelineSpec
from trajforge.pipelines.synthesis import Search
from trajforge.schemas import ids
from trajforge.schemas.records import Step, Trajectory
from trajforge.synthesizers.search import Budget, MCTSSettings, SearchSettings


def fake_app(latency: float, capacity: int) -> FastAPI:
    """Answers after `latency` seconds, `capacity` at a time; GET /stats counts the requests
    and gives the wall-clock times of the first arrival and of the last answer."""
    app, state = FastAPI(), {"requests": 0, "first": None, "last": None}
    slots = asyncio.Semaphore(capacity)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        state["first"] = state["first"] or time.time()
        body = await request.json()
        words = body["messages"][-1]["content"].split() or [""]
        # Prompt logprobs: a made-up but deterministic likelihood of each word of the last turn.
        prompt = [None] + [TokenLogprob(w, -0.1 * len(w)) for w in words]
        choices = (body.get("structured_outputs") or {}).get("choice") or ["Action: go east"]
        answer = Response([Choice(choices[0], "stop")], Usage(len(words), 3), "fake", prompt)
        # The answer is made before the slot is taken: the fake's own Python work, on the CPU
        # the client shares here (a GPU server is on its own host), must not hold a slot.
        reply = JSONResponse(response_body(answer, chat=True))
        async with slots:
            state["requests"] += 1
            await asyncio.sleep(latency)
        state["last"] = time.time()
        return reply

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

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=5) as resp:
            return json.loads(resp.read())

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def trajectories(n: int) -> list[dict]:
    return [
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


def verifier_stage(url: str, rows: list[dict], in_flight: int) -> None:
    """The run's verifier stage (RunInference inside), `in_flight` requests at a time ("yes"
    and "no" are scored by one request each)."""
    with beam.Pipeline(argv=["--runner=FnApiRunner"]) as p:
        _ = p | beam.Create(rows) | Judge(f"openai:{url}#fake", {"cache_dir": None}, concurrency=in_flight)


def mcts_searches(url: str, searches: int, simulations: int, concurrency: int) -> int:
    """MCTS with an LLM policy (priors and rollouts) through the pipeline's Search stage,
    `concurrency` searches in flight: each search's requests wait on each other, so the server
    is kept busy by running more searches than it serves requests at once."""
    settings = SearchSettings(
        method="mcts",
        max_steps=8,
        samples=1,
        budget=Budget(env_steps=10**6, simulations=simulations),
        mcts=MCTSSettings(rollout_depth=1),
    )
    tasks = [
        {
            "task_id": ids.task_id("toy", s.env_task, s.seed),
            "env": "toy",
            "env_task": s.env_task,
            "seed": s.seed,
            "instruction": None,
        }
        for s in ToyEnvironment().task_specs(searches, 0)
    ]
    spec = PipelineSpec(
        run_id="bench", policies=[f"openai:{url}#fake"], settings=settings, concurrency=concurrency
    )
    with beam.Pipeline(argv=["--runner=FnApiRunner"]) as p:
        _ = p | beam.Create([(t, f"openai:{url}#fake") for t in tasks]) | beam.ParDo(Search(spec))


def warm_up_beam() -> None:
    """Beam's one-off start in a process (imports, runner set-up) is not a stage's cost."""
    with beam.Pipeline(argv=["--runner=FnApiRunner"]) as p:
        _ = p | beam.Create([1]) | beam.Map(lambda x: x)


def beam_alone(rows: list[dict]) -> float:
    """The baseline: a pipeline over the same rows that asks no model (Beam's own cost)."""
    t0 = time.perf_counter()
    with beam.Pipeline(argv=["--runner=FnApiRunner"]) as p:
        _ = p | beam.Create(rows) | beam.Map(len)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--latency", type=float, default=0.25)
    ap.add_argument("--capacity", type=int, default=64)
    ap.add_argument("--trajectories", type=int, default=2048)
    ap.add_argument("--searches", type=int, default=512)
    ap.add_argument("--simulations", type=int, default=10)
    ap.add_argument(
        "--search-concurrency",
        type=int,
        default=256,
        help="MCTS searches in flight (the run's `concurrency`)",
    )
    ap.add_argument(
        "--in-flight",
        type=int,
        default=128,
        help="verifier requests in flight (the run's `requests_in_flight`)",
    )
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
    print(f"\nmodel throughput: latency {args.latency}s, capacity {args.capacity} concurrent requests")
    print("achieved: the stage's wall time, Beam's pipeline set-up and tear-down included;")
    print("span: from the first request's arrival to the last answer (the server's view)")
    header = ("stage", "requests", "ideal s", "achieved s", "ratio", "span s", "ratio")
    print("{:<30}{:>9}{:>9}{:>11}{:>7}{:>8}{:>7}".format(*header))
    rows = trajectories(args.trajectories)
    warm_up_beam()
    baseline = beam_alone(rows)
    stages = {
        f"verifier ({args.trajectories} traj)": lambda url: verifier_stage(url, rows, args.in_flight),
        f"mcts ({args.searches} searches)": lambda url: mcts_searches(
            url, args.searches, args.simulations, args.search_concurrency
        ),
    }
    for name, stage in stages.items():
        with FakeGPUServer(args.latency, args.capacity) as server:
            t0 = time.perf_counter()
            stage(server.url)
            wall = time.perf_counter() - t0
            stats = server.stats()
        ideal = stats["requests"] * args.latency / args.capacity
        span = stats["last"] - stats["first"]
        print(
            f"{name:<30}{stats['requests']:>9}{ideal:>9.2f}{wall:>11.2f}{wall / ideal:>6.2f}x"
            f"{span:>8.2f}{span / ideal:>6.2f}x"
        )
    print(f"baseline: Beam alone over the same {len(rows)} rows, no model: {baseline:.2f} s")


if __name__ == "__main__":
    main()
