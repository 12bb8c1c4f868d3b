"""What every emulated Google server here shares: an HTTP listener on loopback, in a thread."""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-answer (a guest that resets during a long poll, a test
        # that times out) is not the server's error.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class LoopbackService:
    """Serves `handler` (whose `emulator` attribute is set to this object) on 127.0.0.1.

    Use as a context manager, or call `serve()` and `shutdown()`. Port 0 picks a free port.
    """

    handler: type[BaseHTTPRequestHandler]
    _server: ThreadingHTTPServer | None = None

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Starts serving in a background thread; returns the base URL."""
        handler = type("Handler", (self.handler,), {"emulator": self})
        self._server = _Server((host, port), handler)
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self.base_url

    @property
    def port(self) -> int:
        assert self._server is not None, "not serving"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        assert self._server is not None, "not serving"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        if self._server is None:
            self.serve()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
