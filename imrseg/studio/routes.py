"""The browser app's routes under /app, beside the server's /v1 API: the page (static
files, no build step), the folder's images and outputs, the classes, runs, reviews
and corrections, and a stream of server-sent events. Images are named by their index
in the folder (`id`), never by a path, so no request can reach a file outside FOLDER
or the output folder. Requests must name this server as their host (a page on another
site that rebinds a name to 127.0.0.1 gets 403), and changes must come from its own
pages (an `Origin` of another site gets 403)."""
from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from importlib import resources
from typing import Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from ..errors import show_path
from ..images import load_image_bytes
from ..outputs.thumbnails import THUMB_SIZE
from ..serve.limits import Limits
from ..serve.server import is_loopback
from ..serve.service import Busy, Segmenter
from .runs import Runner
from .workspace import SUPPORT_KINDS, Conflict, Workspace

PAGE_FILES = {"app.js": "text/javascript", "app.css": "text/css"}
MAX_LISTENERS = 16  # event streams open at once
EVENT_BACKLOG = 2048  # events a slow page may fall behind by before its stream ends (it reconnects)
KEEPALIVE_S = 15.0
MAX_LIST = 500


class SupportRef(BaseModel):
    kind: Literal[SUPPORT_KINDS] = Field(description="image (of the folder, by id), upload or example")
    ref: int | str = Field(description="the image's id, or the upload's or example's ref")


class ClassIn(BaseModel):
    label: str = Field(min_length=1, max_length=200, description="the class's name")
    prompt: str | None = Field(None, max_length=200, description="the text CLIP reads (default: the label)")
    supports: list[SupportRef] = Field([], description="none: zero-shot")


class ClassesIn(BaseModel):
    classes: list[ClassIn]


class RunIn(BaseModel):
    steps: int | None = Field(None, description="refinement steps (default: the model's)")


class ReviewIn(BaseModel):
    state: Literal["accepted", "rejected", "proposed"]


def page_hosts(host: str, port: int) -> frozenset[str] | None:
    """The Host names a page's requests may give (`router`'s `hosts`). On loopback, a page
    of another site could reach the server through a name rebound to 127.0.0.1: only this
    machine's own names for it are answered. Elsewhere the token guards it (its cookie is
    SameSite=Strict) and the names people reach the machine by are not known: None."""
    if not is_loopback(host):
        return None
    return frozenset(f"{name}:{port}" for name in dict.fromkeys((host, "127.0.0.1", "localhost", "[::1]")))


def router(workspace: Workspace, runner: Runner, segmenter: Segmenter, limits: Limits,
           hosts: frozenset[str] | None = None) -> APIRouter:
    """The /app routes; `hosts`: the host[:port] names requests may give, and changes may
    come from (None: any, for a server whose token guards it)."""

    def same_site(request: Request) -> None:
        if hosts is None:
            return
        if request.headers.get("host", "") not in hosts:
            raise HTTPException(403, "host: this server answers only to " + ", ".join(sorted(hosts)))
        origin = request.headers.get("origin")
        if request.method not in ("GET", "HEAD") and origin is not None and urlsplit(origin).netloc not in hosts:
            raise HTTPException(403, f"origin: {origin} is not this server's page")

    app = APIRouter(prefix="/app", dependencies=[Depends(same_site)], include_in_schema=False)

    def image(i: int) -> int:
        if not 0 <= i < len(workspace.images):
            raise HTTPException(404, f"id: no image {i} (the folder has {len(workspace.images)})")
        return i

    def check_prompt(prompt: str) -> None:
        if segmenter.predictor.cam is not None:
            segmenter.predictor.cam.check_label(prompt)

    def state() -> dict:
        with workspace.lock:
            return {"folder": show_path(workspace.folder), "out": show_path(workspace.out),
                    "total": len(workspace.images),
                    "classes": workspace.classes_state(), "running": runner.running,
                    "progress": runner.progress, "counts": workspace.counts(),
                    "steps": segmenter.predictor.steps, "model_version": segmenter.info()["model_version"]}

    @app.get("")
    async def home() -> RedirectResponse:
        return RedirectResponse("/app/", status_code=307)

    @app.get("/")
    async def page() -> Response:
        return Response(_page_file("index.html"), media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-store", "Content-Security-Policy": CSP})

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in PAGE_FILES:
            raise HTTPException(404, f"name: no page file {name!r}")
        return Response(_page_file(name), media_type=PAGE_FILES[name] + "; charset=utf-8")

    @app.get("/api/state")
    async def get_state() -> dict:
        return state()

    @app.get("/api/images")
    async def images(offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=MAX_LIST),
                     order: Literal["name", "score"] = "name",
                     state: Literal["all", "none", "proposed", "accepted", "corrected", "rejected"] = "all") -> dict:
        return workspace.listing(offset, limit, order, state)

    @app.get("/api/thumb/{i}")
    async def thumb(i: int) -> Response:
        data = await _call(workspace.thumbnail, image(i))
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/support/{ref}")
    async def support(ref: str) -> Response:
        return Response(await _call(_support_thumbnail, workspace, ref), media_type="image/jpeg")

    @app.get("/api/image/{i}")
    async def picture(i: int) -> Response:
        data = await _call(lambda: _jpeg(workspace.picture(image(i)).image))
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/detail/{i}")
    async def detail(i: int) -> dict:
        return await _call(workspace.detail, image(i))

    @app.get("/api/mask/{i}")
    async def mask(i: int) -> Response:
        return Response(await _call(workspace.output_file, image(i), "mask"), media_type="image/png")

    @app.get("/api/cam/{i}")
    async def cam(i: int, label: str | None = None) -> Response:
        return Response(await _call(workspace.output_file, image(i), "cam", label), media_type="image/png")

    @app.get("/api/step/{i}/{t}")
    async def step(i: int, t: int, label: str | None = None) -> Response:
        return Response(await _call(workspace.output_file, image(i), "step", label, t), media_type="image/png")

    @app.put("/api/classes")
    async def put_classes(body: ClassesIn) -> dict:
        await _call(workspace.set_classes, [c.model_dump() for c in body.classes], check_prompt)
        return state()

    @app.post("/api/upload")
    async def upload(file: UploadFile = File(description="an image"),
                     mask: UploadFile | None = File(None, description="its drawn mask (PNG, same size)")) -> dict:
        data, drawn = await file.read(), await mask.read() if mask is not None else None
        return await _call(workspace.upload, data, file.filename or "upload", drawn)

    @app.post("/api/example/{i}")
    async def example(i: int) -> dict:
        await _call(workspace.example, image(i))
        return state()

    @app.post("/api/run", status_code=202)
    async def run(body: RunIn | None = None) -> dict:
        return await _call(runner.start, body.steps if body else None)

    @app.post("/api/stop")
    async def stop() -> dict:
        return {"stopping": runner.stop()}

    @app.post("/api/review/{i}")
    async def review(i: int, body: ReviewIn) -> dict:
        return await _call(workspace.review, image(i), body.state)

    @app.post("/api/correct/{i}")
    async def correct(i: int, mask: UploadFile = File(description="the corrected mask, PNG at the image's size"))\
            -> dict:
        data = await mask.read()
        return await _call(workspace.correct, image(i), data)

    @app.get("/api/events")
    async def events(request: Request) -> StreamingResponse:
        if len(workspace.listeners) >= MAX_LISTENERS:
            raise Busy(f"events: {MAX_LISTENERS} pages are listening already; close one", retry_after=5)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue(EVENT_BACKLOG)

        def listener(event: str, data: dict) -> None:
            loop.call_soon_threadsafe(_offer, queue, (event, data))

        workspace.listeners.append(listener)
        stopping: Callable[[], bool] = request.app.state.stopping

        async def stream():
            quiet = 0.0  # seconds since the last line sent
            try:
                yield "retry: 2000\n\n"
                while not stopping():
                    try:
                        item = await asyncio.wait_for(queue.get(), 1.0)
                    except asyncio.TimeoutError:
                        quiet += 1.0
                        if quiet >= KEEPALIVE_S:
                            quiet = 0.0
                            yield ": keepalive\n\n"
                        if await request.is_disconnected():
                            return
                        continue
                    quiet = 0.0
                    if item is None:  # fallen too far behind: end, the page reconnects and reloads
                        return
                    event, data = item
                    yield f"event: {event}\ndata: {json.dumps(data, allow_nan=False)}\n\n"
            finally:
                workspace.listeners.remove(listener)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    return app


# The page runs only its own script and style, and shows images from this server.
CSP = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def _offer(queue: asyncio.Queue, item) -> None:
    try:
        queue.put_nowait(item)
    except asyncio.QueueFull:  # the page stops reading: tell it to reload once it catches up
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)


def _page_file(name: str) -> bytes:
    return resources.files(__package__).joinpath("page", name).read_bytes()


def _support_thumbnail(workspace: Workspace, ref: str) -> bytes:
    """An uploaded support, small."""
    image = load_image_bytes(workspace.support_picture(ref), f"ref: {ref}", max_pixels=workspace.max_pixels,
                             draft_size=THUMB_SIZE).image
    image.thumbnail((THUMB_SIZE, THUMB_SIZE))
    return _jpeg(image)


async def _call(function, *args):
    """`function(*args)` off the event loop; an unknown name is 404, a conflict 409."""
    try:
        return await asyncio.to_thread(function, *args)
    except LookupError as exc:
        raise HTTPException(404, str(exc.args[0]) if exc.args else "not found") from None
    except Conflict as exc:
        raise HTTPException(409, str(exc)) from None


def _jpeg(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()

