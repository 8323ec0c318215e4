"""imrseg's own HTTP API, versioned under /v1: health, what the server runs, and
segmenting query images against support images and labels (uploads, or paths inside
the server's root), masks answered as COCO RLE and/or PNG."""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Literal

import numpy as np
from fastapi import APIRouter, File, Form, UploadFile
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ..errors import InputError, show_path
from ..images import LoadedImage, check_drawn_mask, load_image, load_mask, load_mask_bytes
from ..outputs.coco import Component, rle
from ..outputs.masks import mask_png
from .limits import Limits
from .service import ClassRequest, Segmenter, decode_image

class ErrorBody(BaseModel):
    error: str = Field(description="one line naming the field at fault and the problem")


ERRORS = {status: {"model": ErrorBody, "description": text} for status, text in (
    (400, "bad input: an unreadable or oversized image, a path outside the root, too many images"),
    (401, "missing or wrong token (when the server has one)"),
    (413, "request body over the server's --max-body-bytes"),
    (422, "a field missing or of the wrong type"),
    (503, "queue full or server stopping; see the Retry-After header"),
    (504, "no answer within the server's --timeout"))}


class Health(BaseModel):
    status: str = Field(description='"ok" while the server answers')


class Info(BaseModel):
    version: str = Field(description="imrseg's version")
    model_version: str = Field(description="imrseg's version and the weights' SHA-256 prefix")
    weights: dict | None = Field(description="where the network weights came from (spec, file, sha256, ...)")
    clip: dict | None = Field(description="where the CLIP weights came from")
    device: str = Field(description="where the model runs")
    precision: str = Field(description="the network's precision: fp32, tf32, fp16 or bf16")
    steps: int = Field(description="refinement steps by default")
    batch_size: int = Field(description="most queries in one forward")
    forwards: int = Field(description="forwards run since the server started (a batch of requests is one)")
    requests: int = Field(description="segmentation requests answered since the server started")


class RLE(BaseModel):
    size: list[int] = Field(description="[height, width]")
    counts: str = Field(description="COCO's compressed run-length string (pycocotools.mask.decode reads it)")


class ClassResult(BaseModel):
    name: str = Field(description="the class's name as given")
    score: float = Field(description="confidence in the mask, 0 to 1 (see imrseg.scores)")
    foreground_fraction: float = Field(description="share of the image's pixels in the mask")
    rle: RLE | None = Field(None, description="the mask as COCO RLE (format rle or both)")
    png: str | None = Field(None, description="the mask as a base64 PNG of 0 and 255 (format png or both)")
    cam: list[list[float]] | None = Field(None, description="the 50x50 CLIP-CAM of the query (with cam=true)")
    step_masks: list[RLE] | None = Field(None, description="the mask after each refinement step, as COCO RLE "
                                                           "(with step_masks=true)")


class QueryResult(BaseModel):
    image: str = Field(description="the query's upload file name or root path")
    width: int = Field(description="the query's width: masks are at this size")
    height: int = Field(description="the query's height")
    score: float = Field(description="the query's score: its least confident class present")
    foreground_fraction: float = Field(description="share of pixels some class has")
    classes: list[ClassResult] = Field(description="one per class, in the request's order")


class SegmentResponse(BaseModel):
    model_version: str = Field(description="imrseg's version and the weights' SHA-256 prefix")
    results: list[QueryResult] = Field(description="one per query image: uploads first, then paths")


class ClassPaths(BaseModel):
    name: str = Field(description="the class's name, reported back")
    prompt: str | None = Field(None, description="the text CLIP reads (default: the name)")
    supports: list[str] = Field([], description="support images, paths inside the server's root "
                                                "(none: zero-shot, each query is its own support)")
    masks: list[str] | None = Field(None, description="drawn support masks, one per support, paths inside "
                                                      "the root (default: the supports' CLIP-CAMs)")


class SegmentPaths(BaseModel):
    queries: list[str] = Field(description="query images, paths inside the server's root")
    classes: list[ClassPaths] = Field(description="the classes to segment, at least one")
    steps: int | None = Field(None, description="refinement steps (default: the server's)")
    format: Literal["rle", "png", "both"] = Field("rle", description="how masks are answered")
    cam: bool = Field(False, description="also answer each query's CLIP-CAM")
    step_masks: bool = Field(False, description="also answer the mask after each refinement step")


def router(segmenter: Segmenter, limits: Limits, root: Path | None) -> APIRouter:
    api = APIRouter(prefix="/v1")

    @api.get("/health", response_model=Health, summary="Whether the server answers (no token needed)")
    async def health() -> Health:
        return Health(status="ok")

    @api.get("/info", response_model=Info, responses={401: ERRORS[401]}, summary="The model the server runs")
    async def info() -> Info:
        return Info(**segmenter.info())

    @api.post("/segment", response_model=SegmentResponse, response_model_exclude_none=True, responses=ERRORS,
              summary="Segment uploaded (or root) query images against supports and labels")
    async def segment(
        queries: list[UploadFile] = File([], description="query images"),
        query_paths: list[str] = Form([], description="query images, paths inside the server's root"),
        label: list[str] = Form(description="the class names, one field per class"),
        prompt: list[str] = Form([], description="the text CLIP reads for each label, in the labels' order "
                                                 "(default: the label)"),
        supports: list[UploadFile] = File([], description="support images (none: zero-shot)"),
        support_paths: list[str] = Form([], description="support images, paths inside the server's root"),
        support_masks: list[UploadFile] = File([], description="drawn masks of the uploaded supports, one each, "
                                                               "in their order"),
        support_mask_paths: list[str] = Form([], description="drawn masks of the supports, paths inside the "
                                                             "root, one per support (uploads first)"),
        support_labels: list[str] = Form([], description="the label of each support, uploads first (default: "
                                                         "every support belongs to the only label)"),
        steps: int | None = Form(None, description="refinement steps (default: the server's)"),
        format: Literal["rle", "png", "both"] = Form("rle", description="how masks are answered"),
        cam: bool = Form(False, description="also answer each query's CLIP-CAM"),
        step_masks: bool = Form(False, description="also answer the mask after each refinement step"),
    ) -> SegmentResponse:
        count = len(queries) + len(query_paths) + len(supports) + len(support_paths)
        _check_count(count, limits)
        if len(prompt) > len(label):
            raise InputError(f"prompt: {len(prompt)} prompts for {len(label)} labels")
        masks_given = bool(support_masks or support_mask_paths)
        n_supports = len(supports) + len(support_paths)
        if masks_given and len(support_masks) + len(support_mask_paths) != n_supports:
            raise InputError(f"support_masks: {len(support_masks) + len(support_mask_paths)} masks for "
                             f"{n_supports} supports (give one per support, or none)")
        if support_labels and len(support_labels) != n_supports:
            raise InputError(f"support_labels: {len(support_labels)} labels for {n_supports} supports")
        if n_supports and not support_labels and len(label) > 1:
            raise InputError("support_labels: with several labels, name each support's label")
        unknown = sorted(set(support_labels) - set(label))
        if unknown:
            raise InputError(f"support_labels: {unknown[0]!r} is not among the labels")

        loaded = await run_in_threadpool(
            lambda: ([_upload(f, "queries", limits) for f in queries] + [_rooted(p, "query_paths", root, limits)
                                                                         for p in query_paths],
                     [_upload(f, "supports", limits, full=True) for f in supports]
                     + [_rooted(p, "support_paths", root, limits, full=True) for p in support_paths],
                     [_upload_mask(f, limits) for f in support_masks]
                     + [_rooted_mask(p, root, limits) for p in support_mask_paths]))
        images, support_images, masks = loaded
        for k, (support, mask) in enumerate(zip(support_images, masks)):
            check_drawn_mask(f"support_masks[{k}]", mask, support.image.size, f"supports[{k}]")
        if not images:
            raise InputError("queries: give at least one query image (an upload or a path)")
        owners = support_labels or [label[0]] * n_supports
        classes = [ClassRequest(name, prompt[i] if i < len(prompt) else name,
                                tuple(s.image for s, o in zip(support_images, owners) if o == name),
                                tuple(m for m, o in zip(masks, owners) if o == name) if masks_given else None)
                   for i, name in enumerate(label)]
        names = [f.filename or f"queries[{i}]" for i, f in enumerate(queries)] + list(query_paths)
        return await _answer(segmenter, images, names, classes, steps, format, cam, step_masks)

    @api.post("/segment/paths", response_model=SegmentResponse, response_model_exclude_none=True, responses=ERRORS,
              summary="Segment query images inside the server's root (JSON body)")
    async def segment_paths(request: SegmentPaths) -> SegmentResponse:
        count = len(request.queries) + sum(len(c.supports) for c in request.classes)
        _check_count(count, limits)

        def load():
            images = [_rooted(p, "queries", root, limits) for p in request.queries]
            classes = []
            for i, c in enumerate(request.classes):
                if c.masks is not None and len(c.masks) != len(c.supports):
                    raise InputError(f"classes.{i}.masks: {len(c.masks)} masks for {len(c.supports)} supports")
                classes.append(ClassRequest(
                    c.name, c.prompt or c.name,
                    tuple(_rooted(p, f"classes.{i}.supports", root, limits, full=True).image for p in c.supports),
                    tuple(_rooted_mask(p, root, limits, f"classes.{i}.masks") for p in c.masks)
                    if c.masks is not None else None))
                for k, (image, mask) in enumerate(zip(classes[-1].supports, classes[-1].masks or ())):
                    check_drawn_mask(f"classes.{i}.masks[{k}]", mask, image.size, f"classes.{i}.supports[{k}]")
            return images, classes

        images, classes = await run_in_threadpool(load)
        if not images:
            raise InputError("queries: give at least one query image")
        return await _answer(segmenter, images, request.queries, classes, request.steps, request.format,
                             request.cam, request.step_masks)

    return api


async def _answer(segmenter: Segmenter, images: list[LoadedImage], names: list[str], classes: list[ClassRequest],
                  steps: int | None, format: str, cam: bool, step_masks: bool) -> SegmentResponse:
    keep = (["cam"] if cam else []) + (["steps"] if step_masks else [])
    results = await segmenter.segment(images, classes, steps=steps, keep=keep)
    answers = await run_in_threadpool(lambda: [
        QueryResult(image=name, width=image.size[0], height=image.size[1], score=result.score,
                    foreground_fraction=result.foreground_fraction,
                    classes=[_class_result(c.name, result[c.name], format) for c in classes])
        for name, image, result in zip(names, images, results)])
    return SegmentResponse(model_version=segmenter.info()["model_version"], results=answers)


def _class_result(name: str, prediction, format: str) -> ClassResult:
    mask = prediction.mask
    return ClassResult(
        name=name, score=prediction.score, foreground_fraction=prediction.foreground_fraction,
        rle=mask_rle(mask) if format in ("rle", "both") else None,
        png=base64.b64encode(mask_png(mask)).decode("ascii") if format in ("png", "both") else None,
        cam=prediction.cam.tolist() if prediction.cam is not None else None,
        step_masks=[mask_rle(m) for m in prediction.step_masks] or None)


def mask_rle(mask: np.ndarray) -> RLE:
    """A whole (H, W) mask as COCO RLE, as `imrseg.outputs.coco` encodes a component."""
    return RLE(**rle(Component(mask.astype(np.uint8), 0, 0, mask.shape)))


def _check_count(count: int, limits: Limits) -> None:
    if count > limits.max_images:
        raise InputError(f"images: {count} query and support images, over the limit of {limits.max_images} "
                         "a request (the server's --max-images)")


def _upload(upload: UploadFile, field: str, limits: Limits, full: bool = False) -> LoadedImage:
    return decode_image(upload.file.read(), f"{field}: {upload.filename or 'upload'}", limits, full_size=full)


def _upload_mask(upload: UploadFile, limits: Limits) -> np.ndarray:
    return load_mask_bytes(upload.file.read(), f"support_masks: {upload.filename or 'upload'}", limits.max_pixels)


def inside_root(path: str, field: str, root: Path | None) -> Path:
    """`path` (relative) resolved inside `root`: InputError naming `field` when the
    server has no root, or the path climbs out of it (`..`, an absolute path, a link)."""
    if root is None:
        raise InputError(f"{field}: this server reads no paths (start it with --root DIR), upload the file")
    relative = Path(path)
    if not path or relative.is_absolute() or ".." in relative.parts:
        raise InputError(f"{field}: {show_path(path)}: give a path relative to the server's root, without '..'")
    resolved = (root / relative).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise InputError(f"{field}: {show_path(path)}: leads outside the server's root")
    return resolved


def _rooted(path: str, field: str, root: Path | None, limits: Limits, full: bool = False) -> LoadedImage:
    file = inside_root(path, field, root)
    try:
        return load_image(file, max_pixels=limits.max_pixels, draft_size=0 if full else None)
    except InputError as exc:
        raise InputError(f"{field}: {path}: {str(exc).split(': ', 1)[-1]}") from None


def _rooted_mask(path: str, root: Path | None, limits: Limits, field: str = "support_mask_paths") -> np.ndarray:
    file = inside_root(path, field, root)
    try:
        return load_mask(file, max_pixels=limits.max_pixels)
    except InputError as exc:
        raise InputError(f"{field}: {path}: {str(exc).split(': ', 1)[-1]}") from None

