"""Running the server: the rule that a server reachable from other machines needs a
token, and one process that loads the model once and answers on uvicorn until
Ctrl-C or SIGTERM (requests in flight finish, later ones are refused, exit 0)."""
from __future__ import annotations

import ipaddress
import logging
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError, param, show_path
from .limits import Limits

if TYPE_CHECKING:
    from fastapi import APIRouter

    from .service import Segmenter


def is_loopback(host: str) -> bool:
    """Whether `host` is only reachable from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None, port: int = 9090) -> None:
    """A server on any address but loopback needs a token: no token, no start; `port` is
    one a server can listen on."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InputError(f"{param('port')} must be 1 to 65535, not {port}")
    if not is_loopback(host) and not token:
        raise InputError(f"{param('host')} {host} is reachable from other machines: give a {param('token')} "
                         "(or set IMRSEG_TOKEN), or serve on 127.0.0.1")


def check_port_free(host: str, port: int) -> None:
    """Nothing listens on host:port now, so a server can (checked before a model loads)."""
    import socket

    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise InputError(f"{param('host')} {host}: cannot be resolved ({exc.strerror or exc})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            raise InputError(f"{param('port')} {port} on {host}: cannot listen there ({exc.strerror or exc}); "
                             f"choose another {param('port')}") from None


def check_root(root: Path | None) -> Path | None:
    if root is None:
        return None
    if not root.is_dir():
        raise InputError(f"{param('root')} {show_path(root)}: not a folder")
    return root.resolve()


def serve(predictor, host: str = "127.0.0.1", port: int = 9090, token: str | None = None, root: Path | None = None,
          limits: Limits = Limits(), batch_size: int = 8, max_wait_ms: float = 5.0,
          routers: Callable[["Segmenter"], Sequence["APIRouter"]] = lambda segmenter: ()) -> None:
    """Answer on host:port until stopped, with `predictor` kept warm (see `create_app`);
    `routers(segmenter)` adds an application's own routes (the browser app's) beside /v1."""
    import uvicorn

    from .app import create_app

    check_binding(host, token, port)
    root = check_root(root)
    from .service import Segmenter

    segmenter = Segmenter(predictor, batch_size=batch_size, max_wait_ms=max_wait_ms, max_queue=limits.max_queue,
                          timeout_s=limits.timeout_s, max_steps=limits.max_steps, warm_up=True)
    app = create_app(segmenter, limits, token=token, root=root)
    for router in routers(segmenter):
        app.include_router(router)
    config = uvicorn.Config(app, host=host, port=port, log_level="info", access_log=False,
                            timeout_graceful_shutdown=int(limits.timeout_s) + 1, lifespan="off")
    server = uvicorn.Server(config)
    app.state.stopping = lambda: server.should_exit  # endless answers (event streams) end with the server
    # uvicorn raises the signal that stopped it again once stopped: a quiet handler makes
    # that a normal exit (status 0) rather than death by the signal.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        segmenter.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    logging.getLogger("uvicorn.error").info("imrseg serve: stopped")
