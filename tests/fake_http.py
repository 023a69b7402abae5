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
