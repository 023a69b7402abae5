"""A loopback site: an HTTP server on 127.0.0.1 (a free port), served from a daemon thread until
close(). MiniWoB's pages, the shop and the tests' fake servers all run on it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import Any


class LoopbackServer(ThreadingHTTPServer):
    """Serves `handler` (a request handler class, or a partial of one) at `origin`."""

    # A backlog of 5 (the default) drops SYNs under a burst; the client then sees a
    # ConnectTimeout that this server never hears of.
    request_queue_size = 128
    daemon_threads = True

    def __init__(self, handler: Callable[..., Any], name: str = "loopback-http") -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.origin = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving, free the port, and wait (bounded) for the serving thread."""
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)
