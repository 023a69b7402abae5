"""New weights under the same name are a new run that misses the request cache; so is a new
`model.revision` of a served model; and uncommitted code changes change the code version."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.fake_http import JSONHandler, LoopbackServer
from trajforge.flows.config import RunConfig, git_version
from trajforge.inference.client import ChatRequest
from trajforge.inference.specs import ClientOptions, reliable_client
from trajforge.inference.tiny import build_tiny_model

REQUEST = ChatRequest(
    [{"role": "user", "content": "You are in room 0. Action?"}], max_tokens=3, temperature=0.0
)


def test_new_weights_in_an_hf_model_dir_change_the_run_id_and_miss_the_cache(tmp_path):
    model = build_tiny_model(tmp_path / "policy", seed=0)
    spec, cache = f"hf:{model}", tmp_path / "cache"
    config = RunConfig(envs=["toy"], policies=[spec], out=tmp_path / "out")
    before = config.run_id
    first, _ = reliable_client(spec, ClientOptions(cache_dir=cache))
    answer = first.chat(REQUEST)
    assert not answer.cached and first.chat(REQUEST).cached  # the same weights: from the cache

    build_tiny_model(model, seed=1)  # retrained weights, saved under the same name
    assert config.run_id != before  # not "already in the lake"
    again, _ = reliable_client(spec, ClientOptions(cache_dir=cache))
    fresh = again.chat(REQUEST)
    assert not fresh.cached and again.stats()["calls"] == 1  # asked the new weights

    judged = RunConfig(envs=["toy"], policies=["random"], judge=spec, out=tmp_path / "out")
    rejudged = judged.run_id
    build_tiny_model(model, seed=2)
    assert judged.run_id != rejudged  # the judge's weights count too


def test_a_new_model_revision_changes_the_run_id_and_misses_the_cache(tmp_path):
    served: list[str] = []

    class Handler(JSONHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            served.append(self.path)
            body = {"choices": [{"message": {"content": "go east"}}], "usage": {"prompt_tokens": 5}}
            self.send_json(200, json.dumps(body).encode())

    server = LoopbackServer(Handler)
    try:
        spec = f"openai:{server.origin}/v1#policy"
        ids = {
            rev: RunConfig(envs=["toy"], policies=[spec], model={"revision": rev}).run_id
            for rev in (None, "2026-11-01", "2026-12-01")
        }
        assert len(set(ids.values())) == 3
        for revision, hits in [("2026-11-01", 0), ("2026-11-01", 1), ("2026-12-01", 0), (None, 0)]:
            client, _ = reliable_client(spec, ClientOptions(cache_dir=tmp_path / "cache", revision=revision))
            assert client.chat(REQUEST).cached == bool(hits), revision
        assert len(served) == 3 + 1  # three misses, plus the first-use probe of the server
    finally:
        server.stop()


def test_uncommitted_code_changes_change_the_code_version(tmp_path):
    repo = tmp_path / "repo"
    (repo / "inference").mkdir(parents=True)
    (repo / "inference" / "client.py").write_text("TIMEOUT = 60\n")
    (repo / "README.md").write_text("notes\n")

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)

    git("init", "-q")
    git("-c", "user.email=t@t", "-c", "user.name=t", "add", "-A")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "first")
    clean = git_version(repo / "inference")
    assert clean and "dirty" not in clean

    (repo / "README.md").write_text("more notes\n")  # not code: same version
    assert git_version(repo / "inference") == clean
    (repo / "inference" / "client.py").write_text("TIMEOUT = 5\n")
    edited = git_version(repo / "inference")
    assert edited.startswith(clean + ".dirty-")
    (repo / "inference" / "client.py").write_text("TIMEOUT = 6\n")
    assert git_version(repo / "inference") not in (clean, edited)  # each edit its own version
    (repo / "inference" / "client.py").write_text("TIMEOUT = 60\n")
    assert git_version(repo / "inference") == clean  # undone
    (repo / "inference" / "retry.py").write_text("MAX = 3\n")  # a new module, not yet committed
    assert git_version(repo / "inference").startswith(clean + ".dirty-")
    assert git_version(Path("/")) == ""  # not a checkout
