"""imrseg's own HTTP API, versioned under /v1: health, what the server runs, and
segmenting query images against support images and labels (uploads or paths inside
the server's root), masks answered as COCO RLE and/or PNG."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from pydantic import BaseModel, Field

from .limits import Limits
from .service import Segmenter


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


def router(segmenter: Segmenter, limits: Limits, root: Path | None) -> APIRouter:
    api = APIRouter(prefix="/v1")

    @api.get("/health", response_model=Health, summary="Whether the server answers (no token needed)")
    async def health() -> Health:
        return Health(status="ok")

    @api.get("/info", response_model=Info, summary="The model the server runs")
    async def info() -> Info:
        return Info(**segmenter.info())

    return api
