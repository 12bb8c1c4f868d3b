"""What every emulated Google server here shares: an HTTP listener on loopback, in a thread."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class LoopbackService:
    """Serves `handler` (whose `emulator` attribute is set to this object) on 127.0.0.1.

    Use as a context manager, or call `serve()` and `shutdown()`. Port 0 picks a free port.
    """

    handler: type[BaseHTTPRequestHandler]
    _server: ThreadingHTTPServer | None = None

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Starts serving in a background thread; returns the base URL."""
        handler = type("Handler", (self.handler,), {"emulator": self})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self.base_url

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
