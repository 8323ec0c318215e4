"""RUN/curves.png: the train loss and the validation mIoU per epoch, side by
side, drawn with Pillow (a plotting library would be a dependency for one
picture). The best epoch is marked; a value that is missing or not finite is
left out of its curve."""
from __future__ import annotations

import io
import math

from PIL import Image, ImageDraw, ImageFont

PANEL = (440, 300)  # plot area of each panel, pixels
MARGIN = (64, 36, 20, 44)  # left, top, right, bottom
TICKS = 5
BLUE, ORANGE, GREY, BLACK = (31, 119, 180), (255, 127, 14), (200, 200, 200), (0, 0, 0)


def _ticks(low: float, high: float) -> list[float]:
    return [low + (high - low) * i / (TICKS - 1) for i in range(TICKS)]


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _panel(draw: ImageDraw.ImageDraw, font, left: int, title: str, epochs: list[int], values: list,
           colour, best: int | None) -> None:
    x0, y0 = left + MARGIN[0], MARGIN[1]
    x1, y1 = x0 + PANEL[0], y0 + PANEL[1]
    drawn = [(e, v) for e, v in zip(epochs, values) if _finite(v)]
    low, high = (min(v for _, v in drawn), max(v for _, v in drawn)) if drawn else (0.0, 1.0)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    first, last = epochs[0], max(epochs[-1], epochs[0] + 1)

    def xy(epoch: float, value: float) -> tuple[float, float]:
        return (x0 + (epoch - first) / (last - first) * PANEL[0], y1 - (value - low) / (high - low) * PANEL[1])

    draw.text((x0, 8), title, fill=BLACK, font=font)
    for value in _ticks(low, high):
        y = xy(first, value)[1]
        draw.line([(x0, y), (x1, y)], fill=GREY)
        draw.text((left + 4, y - 6), f"{value:.3g}", fill=BLACK, font=font)
    for epoch in sorted({round(e) for e in _ticks(first, last)}):
        x = xy(epoch, low)[0]
        draw.line([(x, y1), (x, y1 + 4)], fill=BLACK)
        draw.text((x - 6, y1 + 8), str(epoch), fill=BLACK, font=font)
    draw.text((x0 + PANEL[0] // 2 - 16, y1 + 24), "epoch", fill=BLACK, font=font)
    draw.rectangle([x0, y0, x1, y1], outline=BLACK)
    points = [xy(e, v) for e, v in drawn]
    if len(points) > 1:
        draw.line(points, fill=colour, width=2)
    for x, y in points:
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
    if best is not None:
        x, y = xy(epochs[best], values[best])
        draw.ellipse([x - 5, y - 5, x + 5, y + 5], outline=BLACK, width=2)


def curves_png(history: list[dict]) -> bytes:
    """The rows of metrics.jsonl (epoch, train_loss, val_miou) drawn, as a PNG file."""
    epochs = [row.get("epoch") for row in history]
    keep = [i for i, epoch in enumerate(epochs) if _finite(epoch)]
    epochs = [epochs[i] for i in keep] or [1]
    rows = [history[i] for i in keep]
    miou = [row.get("val_miou") for row in rows]
    scored = [i for i, v in enumerate(miou) if _finite(v)]
    best = max(scored, key=lambda i: (miou[i], -i)) if scored else None
    title = f"validation mIoU (%), best {miou[best]:.1f} at epoch {epochs[best]}" if best is not None else \
        "validation mIoU (%)"
    width = 2 * (MARGIN[0] + PANEL[0] + MARGIN[2])
    image = Image.new("RGB", (width, MARGIN[1] + PANEL[1] + MARGIN[3]), "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    _panel(draw, font, 0, "train loss", epochs, [row.get("train_loss") for row in rows], BLUE, None)
    _panel(draw, font, width // 2, title, epochs, miou, ORANGE, best)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
