"""Run an app with uvicorn in a daemon thread: for notebooks, tests and benchmarks.

    with BackgroundServer(create_app(model)) as server:
        requests.get(server.url + "health")

Port 0 (the default) picks a free port; ``url`` gives the one chosen.
"""
from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any


class BackgroundServer:
    """A uvicorn server for ``app`` on ``host:port``, in a daemon thread."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0,
                 log_level: str = "warning") -> None:
        import uvicorn

        self._app = app
        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=port,
                                                     log_level=log_level, lifespan="off",
                                                     ws="none", timeout_graceful_shutdown=3))
        self._thread = threading.Thread(target=self._server.run, name="mobile-sam-serve",
                                        daemon=True)
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        """The base URL, ending in '/'."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self, timeout: float = 30.0) -> str:
        """Start serving; returns :attr:`url` once the socket listens."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the server on {self.host}:{self.port} failed to start "
                                   "(is the port in use?)")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the server did not start within {timeout} s")
            time.sleep(0.01)
        self.port = int(self._server.servers[0].sockets[0].getsockname()[1])
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to exit and wait for its thread. The "everything" jobs of an app
        made by `create_app` are cancelled first, so they do not hold the exit up."""
        jobs = getattr(getattr(self._app, "state", None), "jobs", None)
        if jobs is not None:
            jobs.close()
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
