"""Reading an output folder back: which queries are finished, where their masks
are, their classes and scores, from results.jsonl and the files on disk.

The exports (COCO annotations, the review gallery) start here rather than from a
run in memory, so they cover every query the folder holds, whether it was done in
one run, resumed over several or sharded over many processes, and they can be
made again later without a model."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .durable import read_results
from .errors import InputError, show_path
from .runner.results import RESULTS_FILE

FINISHED = ("done", "skipped")


@dataclass(frozen=True)
class FinishedQuery:
    query: str  # the query's path as the run was given it
    file_name: str  # relative to its query root (posix), as dataset tools want it
    mask: str  # the mask, relative to the output folder (posix)
    outputs: tuple[str, ...]  # every file written for it, relative to the output folder
    score: float | None
    classes: dict  # label -> {"fraction": ..., "score": ...}; empty when the run did not record them

    @property
    def stem(self) -> str:
        """The output stem: the mask's path without `.png`."""
        return self.mask[: -len(".png")]


@dataclass(frozen=True)
class FinishedRun:
    out: Path
    labels: list[str]  # class i + 1 of the masks is labels[i]
    queries: list[FinishedQuery]

    @property
    def multiclass(self) -> bool:
        return len(self.labels) > 1


def header_labels(header: dict) -> list[str]:
    """The classes a run header names, in mask order."""
    if header.get("classes"):
        return [c["label"] for c in header["classes"]]
    return [header["label"]]


def read_finished(out: os.PathLike | str) -> FinishedRun:
    """The finished queries of an output folder, each with its latest row, in the order
    they were first run. InputError when there is no run, or a mask it lists is gone."""
    out = Path(out)
    path = out / RESULTS_FILE
    if not path.is_file():
        raise InputError(f"{show_path(out)}: no {RESULTS_FILE}: not an imrseg output folder")
    rows = read_results(path)
    headers = [row for row in rows if row.get("type") == "run"]
    if not headers:
        raise InputError(f"{show_path(path)}: no run header: not written by imrseg segment")
    latest: dict[str, dict] = {}
    for row in rows:
        if row.get("type") == "query":
            latest[row["query"]] = row
    queries = [_finished(out, row) for row in latest.values() if row.get("status") in FINISHED]
    return FinishedRun(out, header_labels(headers[-1]), queries)


def _finished(out: Path, row: dict) -> FinishedQuery:
    outputs = tuple(row.get("outputs") or ())
    # The mask is written last and listed last.
    mask = outputs[-1] if outputs else _relative(out, row.get("mask") or "")
    if not (out / mask).is_file():
        raise InputError(f"{show_path(out / mask)}: the mask of {show_path(row['query'])} is missing; "
                         "run the segment command again to redo it")
    file_name = row.get("file") or str(PurePosixPath(mask).with_suffix(Path(row["query"]).suffix))
    return FinishedQuery(row["query"], file_name, mask, outputs, row.get("score"), row.get("classes") or {})


def _relative(out: Path, mask: str) -> str:
    """A mask path as an older run recorded it (relative to its working folder) made
    relative to the output folder."""
    try:
        return Path(mask).resolve().relative_to(out.resolve()).as_posix()
    except ValueError:
        raise InputError(f"{show_path(mask)}: recorded in {show_path(out / RESULTS_FILE)} but not inside "
                         f"{show_path(out)}; run the command from the folder it was run in") from None
