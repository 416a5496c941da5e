"""The admin HTTP server: health and readiness for Docker and orchestrators.

FastAPI describes every endpoint in an OpenAPI document (``/openapi.json``); uvicorn
serves it on the admin port, inside the controller's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from config.settings import AdminSettings

if TYPE_CHECKING:
    from proxy.app import Controller


def build_app(ctl: Controller) -> FastAPI:
    """The admin application of one controller."""
    app = FastAPI(title="OCPP site controller", version="0.1.0")

    @app.get("/healthz", summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Chargers can connect: store open, charger port listening")
    async def readyz() -> JSONResponse:
        ok = ctl.ready()
        return JSONResponse(
            {"status": "ready" if ok else "starting", **ctl.status()},
            status_code=200 if ok else 503,
        )

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        return Response(generate_latest(ctl.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the controller owns the lifecycle."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class AdminServer:
    def __init__(self, settings: AdminSettings, app: FastAPI) -> None:
        self._settings = settings
        self._app = app
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in self._settings.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._settings.host, self._settings.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app, log_config=None, access_log=False, lifespan="off", log_level="warning"
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        async with asyncio.timeout(10):
            while not self._server.started:
                if self._task.done():
                    self._task.result()
                await asyncio.sleep(0.01)

    async def close(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
