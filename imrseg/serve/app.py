"""The FastAPI application: auth on every route but the health checks, the request
limits, one-line JSON errors, and imrseg's own versioned API under /v1 (see `api`).
Label Studio's ML-backend routes join from `imrseg.serve.labelstudio` when present."""
from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import importlib.util
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import ImrsegError, InputError, one_line
from .limits import Limits
from .service import Busy, Segmenter

OPEN_PATHS = frozenset({"/health", "/v1/health"})
TOKEN_COOKIE = "imrseg_token"


def create_app(segmenter: Segmenter, limits: Limits, token: str | None = None, root: Path | None = None) -> FastAPI:
    """The server's application around a started `segmenter`: `token` (None: no auth)
    is asked on every route but OPEN_PATHS, as a Bearer token or a Basic password;
    `root` is the folder requests may name images inside (None: uploads only)."""
    from .api import router as api_router

    app = FastAPI(title="imrseg", version=__version__,
                  description="Segment objects from a few example images and a label text (IMR-HSNet + CLIP).")
    app.state.segmenter, app.state.limits, app.state.root = segmenter, limits, root
    app.state.stopping = lambda: False  # `server.serve` tells when the server is stopping
    app.add_middleware(_Guard, token=token, max_body_bytes=limits.max_body_bytes)
    _error_handlers(app)
    app.include_router(api_router(segmenter, limits, root))
    if importlib.util.find_spec(f"{__package__}.labelstudio") is not None:
        from .labelstudio import router as labelstudio_router

        app.include_router(labelstudio_router(segmenter, limits))
    return app


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """The one shape of every error answer: `{"error": "<one line>"}`."""
    return JSONResponse({"error": one_line(Exception(message))}, status_code=status, headers=headers)


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path"))
        return error(422, f"{where or 'request'}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def http(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(InputError)
    async def bad_input(request: Request, exc: InputError):
        return error(400, str(exc))

    @app.exception_handler(ImrsegError)
    async def other(request: Request, exc: ImrsegError):
        return error(400, str(exc))

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy):
        return error(503, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(TimeoutError)
    async def timeout(request: Request, exc: TimeoutError):
        return error(504, str(exc))

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception):
        return error(500, f"internal error: {type(exc).__name__}: {one_line(exc)}")


class _Guard:
    """ASGI middleware before anything reads the body: the token (constant-time
    compare, Bearer or Basic password, or the cookie a browser got by opening a page
    with `?token=`) and the body size, counted as it streams in."""

    def __init__(self, app, token: str | None, max_body_bytes: int):
        self.app, self.max_body_bytes = app, max_body_bytes
        self.token = token.encode() if token else None
        # The cookie holds a digest of the token, never the token: any text is a safe value.
        self.cookie = hashlib.sha256(b"imrseg cookie\0" + self.token).hexdigest().encode() if token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or ())
        if self.token is not None and scope["path"] not in OPEN_PATHS and not self._authorised(headers):
            if scope["method"] == "GET" and self._given_in_query(scope):
                return await self._log_in(scope, receive, send)
            return await error(401, "missing or wrong token: send it as `Authorization: Bearer TOKEN` "
                                    "or as the password of HTTP Basic auth",
                               {"WWW-Authenticate": 'Bearer, Basic realm="imrseg"'})(scope, receive, send)
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return await self._too_large(scope, receive, send)
        received = 0
        started = False

        async def counted():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _BodyTooLarge(self.max_body_bytes)
            return message

        async def sending(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, sending)
        except _BodyTooLarge:  # raised where no handler answered it
            if not started:
                await self._too_large(scope, receive, send)

    def _authorised(self, headers: dict) -> bool:
        cookies = SimpleCookie()
        with contextlib.suppress(CookieError):
            cookies.load(headers.get(b"cookie", b"").decode("latin-1"))
        if TOKEN_COOKIE in cookies and hmac.compare_digest(cookies[TOKEN_COOKIE].value.encode(), self.cookie):
            return True
        scheme, _, value = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer":
            given = value.strip()
        elif scheme.lower() == b"basic":
            try:
                given = base64.b64decode(value.strip(), validate=True).partition(b":")[2]
            except ValueError:
                return False
        else:
            return False
        return hmac.compare_digest(given, self.token)

    def _given_in_query(self, scope) -> bool:
        given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[-1]
        return hmac.compare_digest(given.encode(), self.token)

    async def _log_in(self, scope, receive, send):
        """A page opened with the right `?token=`: the token becomes a cookie only this
        site's own requests carry (HttpOnly, SameSite=Strict), and the page opens without it
        in its address."""
        cookie = f"{TOKEN_COOKIE}={self.cookie.decode()}; HttpOnly; SameSite=Strict; Path=/"
        await RedirectResponse(scope["path"], status_code=303, headers={"Set-Cookie": cookie})(scope, receive, send)

    async def _too_large(self, scope, receive, send):
        await error(413, str(_BodyTooLarge(self.max_body_bytes).detail))(scope, receive, send)


class _BodyTooLarge(HTTPException):
    """The body grew past the limit while read: an HTTPException, so FastAPI's body
    parsing passes it on as it is (413) rather than as a parsing error."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body: over the limit of {limit} bytes (the server's --max-body-bytes)")
