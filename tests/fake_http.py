"""HTTP plumbing shared by the tests' fake model servers: a quiet handler that answers JSON
(and survives a client that gave up), and the loopback server the environments use."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler

from trajforge.environments import loopback


class JSONHandler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def send_json(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            pass  # the client gave up on a hung request


class LoopbackServer(loopback.LoopbackServer):
    """The environments' loopback server (127.0.0.1, a free port, a daemon thread) until stop()."""

    def stop(self) -> None:
        self.close()


class FaultProxy:
    """Stands in front of a model server (loopback only; close() stops it). While `down`, every
    request gets 503 (a server that is down behind its load balancer). Otherwise each POST draws
    a fault from `faults` (kind -> share; the rest are forwarded) with a seeded generator:
    "503_retry_after" and "503" answer 503 (with and without Retry-After: 1), "hang" answers
    nothing for `hang_s`, "malformed" sends broken JSON. `kinds` lists each POST's draw and
    `forwarded` the bodies passed on."""

    def __init__(
        self,
        upstream: str,
        faults: dict[str, float] | None = None,
        seed: int = 7,
        down: bool = False,
        hang_s: float = 30.0,
    ) -> None:
        import random
        import threading
        import time
        import urllib.request

        rng, lock, proxy = random.Random(seed), threading.Lock(), self
        self.down, self.refused = down, 0
        self.kinds: list[str] = []
        self.forwarded: list[bytes] = []
        bounds, total = [], 0.0
        for kind, share in (faults or {}).items():
            total += share
            bounds.append((total, kind))

        def draw() -> str:
            with lock:
                roll = rng.random()
            return next((kind for bound, kind in bounds if roll < bound), "ok")

        class Handler(JSONHandler):
            def do_GET(self) -> None:  # noqa: N802
                self._answer(None)

            def do_POST(self) -> None:  # noqa: N802
                self._answer(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

            def _answer(self, body: bytes | None) -> None:
                if proxy.down:
                    with lock:
                        proxy.refused += 1
                    return self.send_json(503, b'{"error": {"message": "no healthy upstream"}}')
                kind = "ok" if body is None else draw()
                if body is not None:
                    with lock:
                        proxy.kinds.append(kind)
                if kind.startswith("503"):
                    extra = {"Retry-After": "1"} if kind == "503_retry_after" else {}
                    return self.send_json(503, b'{"error": {"message": "overloaded"}}', extra)
                if kind == "hang":
                    time.sleep(hang_s)  # longer than the client's timeout
                    return None
                if kind == "malformed":
                    return self.send_json(200, b'{"choices": [{"mess')
                if body is not None:
                    with lock:
                        proxy.forwarded.append(body)
                request = urllib.request.Request(
                    upstream + self.path,
                    data=body,
                    method=self.command,
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=60) as resp:
                    self.send_json(resp.status, resp.read())

        self.server = LoopbackServer(Handler)
        self.url = self.server.origin

    def close(self) -> None:
        self.server.stop()
