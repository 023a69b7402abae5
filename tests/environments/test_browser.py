"""The sandboxed browser with a real Chromium: nothing leaves, crashes recover, bad actions don't crash."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.fake_http import LoopbackServer
from trajforge.environments.base import ConfigError, EnvironmentFailure, TaskSpec
from trajforge.environments.browser import Action, BrowserEnvironment, parse_action, sandbox

pytest.importorskip("playwright")
if not os.access("/usr/bin/chromium", os.X_OK):
    pytest.skip("needs Chromium at /usr/bin/chromium", allow_module_level=True)


class _Server(LoopbackServer):
    """A loopback server that serves `pages` and counts every connection it accepts."""

    def __init__(self, pages: dict[str, tuple[int, dict[str, str], bytes]]) -> None:
        self.pages = pages
        self.connections = 0
        self.paths: list[str] = []
        super().__init__(_Handler)

    def process_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        self.connections += 1
        super().process_request(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        status, headers, body = self.server.pages.get(self.path.split("?")[0], (200, {}, b"ok"))
        self.send_response(status)
        for key, value in {"Content-Type": "text/html", **headers}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Tap:
    """What else reaches server B's port: UDP datagrams (IPv4 and IPv6) and TCP connections on
    [::1] (server B listens on 127.0.0.1 only)."""

    def __init__(self, port: int) -> None:
        self.received: list[str] = []
        self._sockets = []
        for family, kind, host in [
            (socket.AF_INET, socket.SOCK_DGRAM, "127.0.0.1"),
            (socket.AF_INET6, socket.SOCK_DGRAM, "::1"),
            (socket.AF_INET6, socket.SOCK_STREAM, "::1"),
        ]:
            sock = socket.socket(family, kind)
            try:
                sock.bind((host, port))
            except OSError:  # no IPv6 here: nothing can arrive that way either
                sock.close()
                continue
            if kind == socket.SOCK_STREAM:
                sock.listen()
            sock.settimeout(0.1)
            self._sockets.append(sock)
            threading.Thread(target=self._listen, args=(sock, f"{kind.name} {host}"), daemon=True).start()

    def _listen(self, sock: socket.socket, what: str) -> None:
        while True:
            try:
                if sock.type == socket.SOCK_STREAM:
                    sock.accept()[0].close()
                else:
                    sock.recvfrom(4096)
                self.received.append(what)
            except TimeoutError:
                continue
            except OSError:
                return

    def stop(self) -> None:
        for sock in self._sockets:
            sock.close()


def escape_page(b: str, port_b: int) -> bytes:
    """Every way out towards server B that we could think of."""
    return f"""<!doctype html><html><head><title>Escape</title>
<link rel="dns-prefetch" href="//dns-prefetch-canary.example"><link rel="preconnect" href="{b}/preconnect">
<link rel="stylesheet" href="{b}/css"><style>body {{ background: url({b}/bg) }}</style></head><body>
<a href="{b}/navigate">navigate</a>
<a href="/redirect">redirect</a>
<a href="/redirect-localhost">redirect to localhost</a>
<a href="http://localhost:{port_b}/navigate-localhost">navigate to localhost</a>
<a href="http://[::1]:{port_b}/navigate-ipv6">navigate to ipv6</a>
<a href="{b}/file.zip" download>download from B</a>
<a href="/local.bin" download>download from A</a>
<a href="file:///etc/passwd">file scheme</a>
<a href="data:text/html,<img src={b}/data>">data scheme</a>
<a href="#" onclick="window.open('{b}/popup'); return false">popup</a>
<a href="javascript:fetch('{b}/javascript')">javascript scheme</a>
<form action="{b}/form" method="post"><button>submit form</button></form>
<img src="{b}/img"><script src="{b}/script"></script><iframe src="{b}/iframe"></iframe>
<img src="http://localhost:{port_b}/img-localhost"><img src="http://[::1]:{port_b}/img-ipv6">
<iframe srcdoc='<meta http-equiv="refresh" content="0;url={b}/meta-refresh">'></iframe>
<script>
fetch("http://localhost:{port_b}/fetch-localhost").catch(() => {{}});
fetch("http://[::1]:{port_b}/fetch-ipv6").catch(() => {{}});
try {{
  const pc = new RTCPeerConnection({{iceServers: [
    {{urls: ["stun:127.0.0.1:{port_b}", "stun:[::1]:{port_b}", "stun:localhost:{port_b}"]}},
    {{urls: ["turn:127.0.0.1:{port_b}?transport=udp", "turn:127.0.0.1:{port_b}?transport=tcp"],
      username: "u", credential: "c"}}]}});
  pc.createDataChannel("out");
  pc.createOffer().then(offer => pc.setLocalDescription(offer));
}} catch (e) {{}}
fetch("{b}/fetch").catch(() => {{}});
const xhr = new XMLHttpRequest(); xhr.open("GET", "{b}/xhr"); xhr.send();
try {{ new WebSocket("ws://127.0.0.1:{port_b}/ws"); }} catch (e) {{}}
navigator.sendBeacon("{b}/beacon", "x");
new EventSource("{b}/events");
if (navigator.serviceWorker) navigator.serviceWorker.register("/sw.js");
</script></body></html>""".encode()


@pytest.fixture
def servers() -> Iterator[tuple[_Server, _Server]]:
    b = _Server({})
    a = _Server(
        {
            "/redirect": (302, {"Location": f"{b.origin}/redirected"}, b""),
            "/redirect-localhost": (
                302,
                {"Location": f"http://localhost:{b.server_address[1]}/redirected-localhost"},
                b"",
            ),
            "/sw.js": (200, {"Content-Type": "text/javascript"}, f"fetch('{b.origin}/sw')".encode()),
            "/local.bin": (200, {"Content-Type": "application/octet-stream"}, b"\0" * 64),
            "/counter": (
                200,
                {},
                b'<title>Counter</title><button onclick="n.textContent = +n.textContent + 1">add</button>'
                b"<span id=n>0</span><button onclick='this.remove()'>vanish</button>",
            ),
        }
    )
    a.pages["/"] = (200, {}, escape_page(b.origin, b.server_address[1]))
    yield a, b
    a.stop()
    b.stop()


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def chromium_pids() -> set[int]:
    found = subprocess.run(["pgrep", "-f", "chromium"], capture_output=True, text=True).stdout
    return {int(pid) for pid in found.split()}


async def pages_open(page) -> int:  # type: ignore[no-untyped-def]
    return len(page.context.pages)


def count(env: BrowserEnvironment) -> str:
    return env.on_page(lambda page: page.inner_text("#n"))


def ref(env: BrowserEnvironment, name: str) -> str:
    return next(e.ref for e in env.elements if e.name == name)


def test_nothing_reaches_a_second_server(servers, tmp_path, monkeypatch):
    a, b = servers
    tap = _Tap(b.server_address[1])  # WebRTC's STUN/TURN over UDP, and B's [::1] alias
    net_log = tmp_path / "net-log.json"  # every name Chromium resolves (a fresh Chromium: no pool is up)
    monkeypatch.setattr(sandbox, "CHROMIUM_ARGS", [*sandbox.CHROMIUM_ARGS, f"--log-net-log={net_log}"])
    env = BrowserEnvironment(allowed_origins=[a.origin], start_urls=[f"{a.origin}/"])
    try:
        env.reset(env.task_specs(1, seed=0)[0])
        time.sleep(1.0)  # let fetch, XHR, WebSocket, beacon, ICE gathering and friends fire
        assert env.blocked_requests > 5
        links = ["navigate", "redirect", "download from B", "download from A", "file scheme", "data scheme"]
        links += ["redirect to localhost", "navigate to localhost", "navigate to ipv6"]
        for name in [*links, "popup", "javascript scheme", "submit form"]:
            before = env.blocked_requests
            outcome = env.step(f"click {ref(env, name)}")
            time.sleep(0.15)
            assert outcome.info["valid_action"], outcome.observation
            assert env.blocked_requests > before, f"{name}: no blocked attempt counted"
            assert outcome.info["blocked_requests"] >= before
            if not outcome.info["url"].startswith(a.origin):
                assert "outside the sandbox" in outcome.observation
                env.step("go back")
        assert env.on_page(pages_open) == 1  # the popup was closed
    finally:
        env.close()
        tap.stop()
    assert b.connections == 0, b.paths
    assert tap.received == []
    assert "/redirect" in a.paths and "/sw.js" not in a.paths  # the redirect was tried; no worker
    assert "/redirect-localhost" in a.paths
    assert "trajforge-blocked.invalid" in net_log.read_text()  # the log is written...
    assert "dns-prefetch-canary" not in net_log.read_text()  # ...and no name was prefetched


def test_a_killed_browser_is_replaced_and_the_episode_replayed_once(servers):
    a, _ = servers
    env = BrowserEnvironment(allowed_origins=[a.origin], start_urls=[f"{a.origin}/counter"])
    try:
        env.reset(env.task_specs(1, seed=0)[0])
        env.step(f"click {ref(env, 'add')}")
        assert count(env) == "1"
        first = env.chromium_pids()
        env.kill_browser()
        outcome = env.step(f"click {ref(env, 'add')}")  # replays the first click, then this one
        assert outcome.info["valid_action"] and count(env) == "2"
        assert not any(alive(pid) for pid in first)

        env.kill_browser()
        with pytest.raises(EnvironmentFailure, match="died again") as died:
            env.step(f"click {ref(env, 'add')}")
        assert died.value.reason == "browser_died"  # the code in failures.reason

        env.reset(TaskSpec(f"{a.origin}/counter", seed=0))  # a new episode starts a new browser
        assert count(env) == "0"
    finally:
        pids = env.chromium_pids()
        env.close()
    assert pids and not any(alive(pid) for pid in pids)


def test_a_hung_browser_is_killed_and_the_episode_replayed(servers):
    """SIGSTOP freezes Chromium: the step times out, the browser answers no probe, so it is
    killed and the episode replayed in a new one, within step_timeout_s plus the probe's 5 s."""
    a, _ = servers
    env = BrowserEnvironment(allowed_origins=[a.origin], start_urls=[f"{a.origin}/counter"], step_timeout_s=3)
    try:
        env.reset(env.task_specs(1, seed=0)[0])
        env.step(f"click {ref(env, 'add')}")
        frozen = env.chromium_pids()[0]
        os.kill(frozen, signal.SIGSTOP)
        started = time.monotonic()
        outcome = env.step(f"click {ref(env, 'add')}")
        assert time.monotonic() - started < 3 + 5 + 15
        assert outcome.info["valid_action"] and count(env) == "2"
        assert not alive(frozen) and env.chromium_pids()[0] != frozen
    finally:
        with contextlib.suppress(OSError):
            os.kill(frozen, signal.SIGCONT)
        env.close()


def test_a_browser_that_dies_during_reset_is_retried_then_given_up(servers, monkeypatch):
    a, _ = servers
    env = BrowserEnvironment(allowed_origins=[a.origin], start_urls=[f"{a.origin}/counter"])
    begin = BrowserEnvironment._begin
    kills = iter([True, False, True, True])

    async def dying_begin(self, page, task):  # type: ignore[no-untyped-def]
        if next(kills):
            self.kill_browser()
            await page.wait_for_timeout(100)
        return await begin(self, page, task)

    monkeypatch.setattr(BrowserEnvironment, "_begin", dying_begin)
    task = TaskSpec(f"{a.origin}/counter", seed=0)
    try:
        assert "add" in env.reset(task).observation  # died once, retried in a fresh browser
        with pytest.raises(EnvironmentFailure, match="died twice") as died:
            env.reset(task)
        assert died.value.reason == "browser_died"
    finally:
        env.close()


def test_bad_and_stale_actions_are_observations_not_crashes(servers):
    a, _ = servers
    env = BrowserEnvironment(allowed_origins=[a.origin], start_urls=[f"{a.origin}/counter"])
    try:
        env.reset(TaskSpec(f"{a.origin}/counter", seed=0))
        vanish = ref(env, "vanish")
        assert env.step(f"click {vanish}").info["valid_action"]
        for action, why in [
            (f"click {vanish}", f"no element {vanish}"),  # stale: it removed itself
            ("click e999", "no element e999"),
            ("dance", "unknown action"),
            (f'type {ref(env, "add")} "hi"', "not a text field"),
            (f'select {ref(env, "add")} "x"', "not a select"),
            ('type e1 "unterminated', "unknown action"),
            ('press "NoSuchKey"', "press failed"),
        ]:
            outcome = env.step(action)
            assert outcome.observation.startswith("Invalid action:") and why in outcome.observation, action
            assert (outcome.reward, outcome.done, outcome.info["valid_action"]) == (0.0, False, False)
        assert "Interactive elements:" in outcome.observation  # the page is still shown
    finally:
        env.close()


def test_screenshots_travel_in_info_never_in_the_observation(servers):
    a, _ = servers
    env = BrowserEnvironment(allowed_origins=[a.origin], start_urls=[f"{a.origin}/counter"], screenshots=True)
    try:
        reset = env.reset(TaskSpec(f"{a.origin}/counter", seed=0))
        outcome = env.step(f"click {ref(env, 'add')}")
        for info, observation in [(reset.info, reset.observation), (outcome.info, outcome.observation)]:
            assert info["screenshot"].startswith(b"\x89PNG") and "PNG" not in observation
    finally:
        env.close()


def test_close_leaves_no_chromium_behind(servers):
    a, _ = servers
    before = chromium_pids()
    env = BrowserEnvironment(allowed_origins=[a.origin], start_urls=[f"{a.origin}/counter"])
    env.reset(TaskSpec(f"{a.origin}/counter", seed=0))
    ours = set(env.chromium_pids())
    assert ours and ours <= chromium_pids() - before
    env.close()
    assert not ours & {pid for pid in chromium_pids() if alive(pid)}
    env.close()  # twice is fine


def test_options_are_checked():
    with pytest.raises(ConfigError, match="allowed_origins"):
        BrowserEnvironment(allowed_origins=["127.0.0.1:80"])
    with pytest.raises(ConfigError, match="outside allowed_origins"):
        BrowserEnvironment(allowed_origins=["http://127.0.0.1:1"], start_urls=["http://127.0.0.1:2/"])
    with pytest.raises(ConfigError, match="action_timeout_s"):
        BrowserEnvironment(action_timeout_s=0)
    with pytest.raises(ConfigError, match="executable_path"):
        BrowserEnvironment(executable_path="/nonexistent/chromium")


def test_actions_parse():
    assert parse_action("click e3") == Action("click", "e3")
    assert parse_action('type e12 "say \\"hi\\""') == Action("type", "e12", 'say "hi"')
    assert parse_action('select e1 "Czech Republic"') == Action("select", "e1", "Czech Republic")
    assert parse_action('press "Enter"') == Action("press", text="Enter")
    assert parse_action("scroll up") == Action("scroll", text="up")
    assert parse_action(" go back ") == Action("back")
    for bad in ["click", 'click e3 "x"', "type e3", "type e3 x", "hover e1", "press Enter"]:
        with pytest.raises(ValueError):
            parse_action(bad)
