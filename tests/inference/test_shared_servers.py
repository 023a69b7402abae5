"""`vllm:` specs share one server per model per machine, across search threads and worker
processes, and the server goes away with the run, even a killed one.

vLLM needs a GPU, so the launcher is swapped for the project's real CPU server (`trajforge
serve-model --engine transformers`, which speaks the same protocol); everything else (the
watchdog, the locks, the policies of the `vllm:` spec) is what runs on a GPU host."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from trajforge.inference import serve
from trajforge.synthesizers.llm_policy import make_llm_policy

# A worker process: 4 search threads each make their vllm: policy and ask it once, then hold
# their policies until the file `go` exists (forever when it never does).
WORKER = """
import json, sys, threading, time
from pathlib import Path
from trajforge.inference import serve
serve.resolve_engine = lambda engine: "transformers"  # the CPU server stands in for vLLM
from trajforge.inference.client import ChatRequest
from trajforge.synthesizers.llm_policy import make_llm_policy

model, go = sys.argv[1], Path(sys.argv[2])
policies, lock = [], threading.Lock()

def search_thread():
    policy = make_llm_policy("vllm:" + model, max_tokens=2)
    policy.client.chat(ChatRequest([{"role": "user", "content": "hi"}], max_tokens=2))
    with lock:
        policies.append(policy)

threads = [threading.Thread(target=search_thread) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(sorted({p.client.backend.base_url for p in policies})), flush=True)
while not go.exists():
    time.sleep(0.1)
for p in policies:
    p.close()
"""


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie may linger where PID 1 does not reap)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


@pytest.fixture
def server_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "servers"
    monkeypatch.setenv(serve.SERVER_DIR_ENV, str(folder))
    return folder


def workers(n: int, model: Path, go: Path) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(model), str(go)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(n)
    ]


def the_state(server_dir: Path) -> dict:
    [state] = server_dir.glob("*.json")
    return json.loads(state.read_text())


def test_four_threads_in_two_processes_share_one_server_that_stops_after_the_run(tiny_model, server_dir):
    go = server_dir.parent / "go"
    procs = workers(2, tiny_model, go)
    try:
        seen = [json.loads(p.stdout.readline() or "null") for p in procs]  # type: ignore[union-attr]
        assert seen[0] and seen == [seen[0], seen[0]] and len(seen[0]) == 1  # one URL for all 8
        starts = (server_dir / "servers.log").read_text().splitlines()
        assert len(starts) == 1, starts  # one server started on this machine
        guard = the_state(server_dir)["guard_pid"]
        url = seen[0][0].removesuffix("/v1")
        assert answers(url) and running(guard)
    finally:
        go.touch()
        for p in procs:
            p.wait(timeout=60)
    assert [p.returncode for p in procs] == [0, 0]
    # The run is over: the last user let go, so the watchdog stopped the server and left.
    assert wait_until(lambda: not answers(url) and not running(guard), 15)
    assert not list(server_dir.glob("*.json"))


def test_the_server_dies_with_a_killed_run(tiny_model, server_dir):
    [proc] = workers(1, tiny_model, server_dir.parent / "never")
    try:
        [base] = json.loads(proc.stdout.readline() or '[""]')  # type: ignore[union-attr]
        url = base.removesuffix("/v1")
        guard = the_state(server_dir)["guard_pid"]
        assert answers(url)
        os.kill(proc.pid, signal.SIGKILL)  # no teardown, no atexit: only the kernel lets go of its lock
        proc.wait(timeout=10)
        assert wait_until(lambda: not answers(url) and not running(guard), 15)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_policies_of_threads_in_one_process_share_the_server_until_the_last_closes(
    tiny_model, server_dir, monkeypatch
):
    monkeypatch.setattr(serve, "resolve_engine", lambda engine: "transformers")
    policies = [make_llm_policy(f"vllm:{tiny_model}") for _ in range(3)]
    urls = {p.client.backend.base_url for p in policies}
    assert len(urls) == 1 and len((server_dir / "servers.log").read_text().splitlines()) == 1
    url = urls.pop().removesuffix("/v1")
    guard = the_state(server_dir)["guard_pid"]
    policies[0].close()
    policies[0].close()  # closing twice gives back one share, not two
    policies[1].close()
    time.sleep(1.5)
    assert answers(url)  # the third still uses it
    policies[2].close()
    assert wait_until(lambda: not answers(url) and not running(guard), 15)


def test_a_pipeline_with_eight_search_threads_starts_one_server_and_stops_it_at_the_end(
    tiny_model, server_dir, tmp_path, monkeypatch
):
    from trajforge.environments.toy import ToyEnvironment
    from trajforge.flows.staging import RunDir
    from trajforge.pipelines import synthesis
    from trajforge.pipelines.spec import PipelineSpec, planned_task
    from trajforge.synthesizers.search import Budget, SearchSettings

    monkeypatch.setattr(serve, "resolve_engine", lambda engine: "transformers")
    specs = [planned_task("toy", s.env_task, s.seed) for s in ToyEnvironment().task_specs(8, 5)]
    run_dir = RunDir(tmp_path, "run")
    spec = PipelineSpec(
        run_id="run",
        policies=[f"vllm:{tiny_model}"],
        settings=SearchSettings(method="rollout", max_steps=2, budget=Budget(env_steps=10)),
        concurrency=8,
        model_options={"max_tokens": 4, "timeout_s": 30},
    )
    synthesis.run(["--runner=FnApiRunner"], specs, spec, run_dir.staging)
    trajectories = run_dir.read_staged("trajectories").to_pylist()
    assert len(trajectories) == 8 and all(t["model_calls"] > 0 for t in trajectories)
    [start] = (server_dir / "servers.log").read_text().splitlines()  # one server for 8 searches
    url = start.split()[3]
    assert wait_until(lambda: not answers(url), 15)  # the pipeline is done: so is the server


def test_hf_policies_of_many_threads_load_the_model_once(tiny_model):
    import threading

    from trajforge.inference import local
    from trajforge.inference.client import ChatRequest

    policies: list = []

    def search_thread() -> None:
        policy = make_llm_policy(f"hf:{tiny_model}", max_tokens=2)
        policy.client.chat(ChatRequest([{"role": "user", "content": "hi"}], max_tokens=2))
        policies.append(policy)

    threads = [threading.Thread(target=search_thread) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    models = {id(p.client.backend._load()[1]) for p in policies}
    assert len(policies) == 6 and len(models) == 1
    assert sum(1 for key in local._MODELS if key[0] == Path(tiny_model).resolve()) == 1
