"""The limits a server holds every request to, in one place: the app reads the body,
image and count limits, the service the queue and the time limit. Never imports torch."""
from __future__ import annotations

from dataclasses import dataclass, fields

from ..errors import InputError


@dataclass(frozen=True)
class Limits:
    """max_body_bytes: a request body larger than this is refused while it is read (413).
    max_pixels: an image with more pixels is refused before it is decoded.
    max_images: query plus support images in one request.
    max_queue: queries waiting for the model; more -> 503 with Retry-After.
    timeout_s: a request still unanswered after this many seconds -> 504.
    max_steps: refinement steps a request may ask for."""

    max_body_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_images: int = 32
    max_queue: int = 64
    timeout_s: float = 90.0
    max_steps: int = 10

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not value > 0:
                raise InputError(f"`{f.name}` must be more than 0, not {value}")
