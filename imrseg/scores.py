"""The confidence score a query's mask gets, so that a labelled dataset can be
reviewed worst first.

    score = mean, over the mask's pixels, of the foreground probability averaged
            over the K supports and over the last two refinement steps
            (the last step alone when there is one step); 0 for an empty mask.

Why this measure: the network gives no calibrated probability of being right, but
the two disagreements it can see are the usual signs of a wrong mask: supports
that do not agree on a pixel (each support is a separate refinement, and the vote
hides how close it was) and a mask still moving between the last two steps (the
refinement has not settled). Both pull the averaged probability towards or below
one half on exactly the pixels concerned, so the score falls as either grows; a
mask that every support and both steps give with certainty scores 1. Only the
mask's pixels count, so a small object on a large easy background is judged by
itself. A query with several classes scores as its least confident class present;
one where no class is found scores 0, so empty results are reviewed first.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence


def evidence(step_probs: Sequence):
    """(H, W) mean of the last two entries of `step_probs`, each (K, H, W): the
    foreground probability of every support at one step."""
    last = step_probs[-2:]
    return sum(p.mean(0) for p in last) / len(last)


def mask_score(evidence_map, mask) -> float:
    """Mean of `evidence_map` over the pixels of `mask` (both (H, W)); 0.0 when empty."""
    return float(evidence_map[mask].mean()) if mask.any() else 0.0


def query_score(per_class: Iterable[tuple[float, float]]) -> float:
    """A query's score from its classes' (foreground fraction, score): the lowest
    score among the classes it has pixels of; 0.0 when it has none."""
    present = [score for fraction, score in per_class if fraction > 0]
    return min(present) if present else 0.0
