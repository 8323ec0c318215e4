"""Masks as Label Studio results: a `BrushLabels` region is Label Studio's own brush
RLE (not COCO's), a `PolygonLabels` region the outline of a connected component in
percent of the image.

The brush format is the run-length packing Label Studio's editor decodes
(thi-ng's rle-pack): a 32-bit count of values, the word size less one in 5 bits, four
run-length field sizes less one in 4 bits each, then per run a bit saying "repeat",
2 bits choosing the length field, the length less one, and the value; the values are
the mask's RGBA bytes, so every pixel is four equal values (0 or 255). Runs are
encoded all at once with numpy: a mask of noise, the worst case, in a tenth of the
time a run-at-a-time encoder takes.

Polygons reuse the COCO export's tracing (`imrseg.outputs.coco`): the same components
and outlines, so both agree on what a region is."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError, param
from ..outputs.coco import components, polygons
from ..predictor import ClassPredictions
from .labelstudio_config import Control

WORD_BITS = 8
RUN_FIELD_BITS = (3, 4, 8, 16)  # the four run-length field sizes
CHANNELS = 4  # RGBA: each pixel is four values
LONGEST_RUN = 1 << RUN_FIELD_BITS[-1]
CHUNK_RUNS = 1 << 16  # runs turned into bits at a time (bounds the memory it takes)


def brush_rle(mask: np.ndarray) -> list[int]:
    """Label Studio's brush RLE of an (H, W) mask (nonzero = drawn), as the list of
    bytes a result's `value.rle` holds."""
    flat = (np.asarray(mask).ravel() != 0).astype(np.uint8)
    header = [(flat.size * CHANNELS, 32), (WORD_BITS - 1, 5)] + [(n - 1, 4) for n in RUN_FIELD_BITS]
    pieces = [_bits(np.array([v for v, _ in header], np.int64), np.array([w for _, w in header], np.int64))]
    if flat.size:
        starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
        lengths = np.diff(np.append(starts, flat.size)) * CHANNELS
        values = flat[starts].astype(np.int64) * 255
        # a run longer than the longest field holds is written as several runs
        pieces_per_run = -(-lengths // LONGEST_RUN)
        values = np.repeat(values, pieces_per_run)
        lengths = _split(lengths, pieces_per_run)
        for first in range(0, lengths.size, CHUNK_RUNS):
            pieces.append(_runs(lengths[first:first + CHUNK_RUNS], values[first:first + CHUNK_RUNS]))
    return np.packbits(np.concatenate(pieces)).tolist()


def _split(lengths: np.ndarray, pieces: np.ndarray) -> np.ndarray:
    """Each run length cut into `pieces` runs of LONGEST_RUN, the last one the rest."""
    out = np.full(int(pieces.sum()), LONGEST_RUN, np.int64)
    last = np.cumsum(pieces) - 1
    out[last] = lengths - (pieces - 1) * LONGEST_RUN
    return out


def _runs(lengths: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The bits of repeated runs (every run here is at least CHANNELS long)."""
    field = np.searchsorted(np.array([1 << n for n in RUN_FIELD_BITS]), lengths)
    size = np.array(RUN_FIELD_BITS, np.int64)[field]
    code = (((1 << 2 | field) << size | (lengths - 1)) << WORD_BITS) | values
    return _bits(code, 1 + 2 + size + WORD_BITS)


def _bits(codes: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """The low `widths[i]` bits of each `codes[i]`, most significant first, one after another."""
    top = int(widths.max())
    shifts = np.arange(top - 1, -1, -1, dtype=np.int64)
    bits = ((codes[:, None] >> shifts) & 1).astype(np.uint8)
    return bits[shifts[None, :] < widths[:, None]]


def brush_mask(rle: object, width: int, height: int, field: str) -> np.ndarray:
    """The (height, width) bool mask a brush RLE draws (a pixel is drawn where its alpha
    is not 0), as a person's annotation holds it; InputError naming `field` when the
    RLE is not one or is not of that size."""
    try:
        data = np.asarray(rle, dtype=np.int64)
        if data.ndim != 1 or data.size < 7 or data.min() < 0 or data.max() > 255:
            raise ValueError
    except (TypeError, ValueError):
        raise InputError(f"{param(field)}: not a brush RLE (a list of bytes)") from None
    bits = np.unpackbits(data.astype(np.uint8))
    reader = _BitReader(bits)
    count, word = reader.read(32), reader.read(5) + 1
    sizes = [reader.read(4) + 1 for _ in range(4)]
    if count != width * height * CHANNELS:
        raise InputError(f"{param(field)}: holds {count} values, not {CHANNELS} per pixel of {width}x{height}")
    out = np.zeros(count, np.uint8)
    i = 0
    try:
        while i < count:
            repeat = reader.read(1)
            end = min(i + 1 + reader.read(sizes[reader.read(2)]), count)
            if repeat:
                out[i:end] = reader.read(word)
            else:
                out[i:end] = [reader.read(word) for _ in range(end - i)]
            i = end
    except IndexError:
        raise InputError(f"{param(field)}: the brush RLE ends early") from None
    return out.reshape(height, width, CHANNELS)[:, :, 3] != 0


class _BitReader:
    """Reads unsigned fields, most significant bit first, from an array of bits."""

    def __init__(self, bits: np.ndarray):
        self.bits, self.at = bits, 0

    def read(self, n: int) -> int:
        if self.at + n > self.bits.size:
            raise IndexError(n)
        value = 0
        for bit in self.bits[self.at:self.at + n].tolist():
            value = value << 1 | bit
        self.at += n
        return value


def task_prediction(controls: Sequence[Control], predictions: ClassPredictions,
                    model_version: str) -> dict:
    """One task's prediction as Label Studio stores it: a result per control and class
    present (a brush region each, or a polygon per connected component), each with the
    class's `score`; the prediction's `score` is the image's (imrseg.scores)."""
    labels = predictions.labels
    index = None if len(labels) == 1 else predictions.index_mask
    height, width = predictions[labels[0]].mask.shape
    results = []
    for control in controls:
        for label in control.labels:
            if label.name not in predictions.by_label:
                continue
            class_index = labels.index(label.name) + 1
            mask = predictions[label.name].mask if index is None else index == class_index
            if not mask.any():
                continue
            common = {"from_name": control.from_name, "to_name": control.to_name, "type": control.type,
                      "original_width": width, "original_height": height, "image_rotation": 0,
                      "score": float(predictions[label.name].score)}
            if control.type == "brushlabels":
                results.append({"id": f"{control.from_name}-{class_index}", **common,
                                "value": {"format": "rle", "rle": brush_rle(mask), "brushlabels": [label.name]}})
                continue
            for n, component in enumerate(components(mask.astype(np.uint8), 1), start=1):
                for k, outline in enumerate(polygons(component), start=1):
                    points = [[_percent(x, width), _percent(y, height)]
                              for x, y in zip(outline[0::2], outline[1::2])]
                    results.append({"id": f"{control.from_name}-{class_index}-{n}-{k}", **common,
                                    "value": {"points": points, "closed": True, "polygonlabels": [label.name]}})
    return {"result": results, "score": float(predictions.score), "model_version": model_version}


def _percent(value: float, extent: int) -> float:
    return round(min(max(value / extent * 100.0, 0.0), 100.0), 4)
