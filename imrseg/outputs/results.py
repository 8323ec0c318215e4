"""`results.jsonl`, the record of an output folder, and what it proves.

Each run appends a header row (`type` "run": weights, label, supports, the classes,
settings and the fingerprint of everything that shapes a mask, see `identity`),
then, in query order, one `type` "query" row per query: path, its path relative to
the folder it was found in (`file_name`), its size and mtime when planned, mask,
the files written (`outputs`, relative to the output folder, the mask last),
status, foreground fraction, the score (`imrseg.scores`), per class its fraction
and score (`classes`), steps, seconds, error. Before a batch's files are written a
`type` "writing" row names them, so even a killed run's files are known as
imrseg's and never read back as inputs. A distributed run writes one file per rank
and rank 0 merges them in query order."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..durable import ResultsLog, read_results
from ..errors import InputError, show_path
from .naming import MASK_SUFFIX, completed_outputs, output_path

RESULTS_FILE = "results.jsonl"
_RANK_LOG = re.compile(r"\.results\.rank(\d+)\.jsonl")


@dataclass
class Outcome:
    query: Path
    status: str  # "done" | "skipped" | "failed"
    mask: Path | None = None
    foreground_fraction: float | None = None
    seconds: float | None = None
    error: str | None = None
    steps: int | None = None
    query_file: dict | None = None  # size and mtime_ns when planned: a changed file is redone
    outputs: list[str] = field(default_factory=list)
    file_name: str | None = None  # relative to the folder the query was found in
    score: float | None = None
    classes: dict | None = None  # label -> {"fraction", "score"}

    def row(self) -> dict:
        return {"type": "query", "query": str(self.query), "file_name": self.file_name, "status": self.status,
                "mask": str(self.mask) if self.mask else None, "outputs": self.outputs,
                "query_file": self.query_file, "foreground_fraction": self.foreground_fraction,
                "score": self.score, "classes": self.classes, "steps": self.steps, "seconds": self.seconds,
                "error": self.error}

    @classmethod
    def skipped(cls, query: Path, finished: dict) -> Outcome:
        """A query kept from an earlier run: its row carried forward."""
        return cls(query, "skipped", Path(finished["mask"]), finished["foreground_fraction"],
                   steps=finished["steps"], query_file=finished["query_file"], outputs=finished["outputs"],
                   file_name=finished.get("file_name"), score=finished.get("score"),
                   classes=finished.get("classes"))


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    interrupted: bool = False
    foreground: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    finished: list = field(default_factory=list)  # (query, score, foreground fraction) of done and skipped

    def add(self, outcome: Outcome) -> None:
        setattr(self, outcome.status, getattr(self, outcome.status) + 1)
        if outcome.status == "done":
            self.foreground.append(outcome.foreground_fraction)
            self.seconds.append(outcome.seconds)
        if outcome.status != "failed":
            self.finished.append((str(outcome.query), outcome.score, outcome.foreground_fraction))

    def worst(self, count: int, sort_by: str = "score") -> list[tuple[str, float | None, float | None]]:
        """The `count` finished queries lowest by `sort_by` ("score" or "foreground");
        those without a score (rows of an older imrseg) come last."""
        key = 1 if sort_by == "score" else 2
        return sorted(self.finished, key=lambda f: (f[key] is None, f[key] or 0.0, f[0]))[:count]

    def to_dict(self) -> dict:
        mean = (lambda xs: sum(xs) / len(xs) if xs else None)
        return {"done": self.done, "skipped": self.skipped, "failed": self.failed,
                "interrupted": self.interrupted, "mean_foreground_fraction": mean(self.foreground),
                "seconds_per_image": mean(self.seconds)}


def query_file(path: Path) -> dict | None:
    """What identifies a query's content cheaply: size and mtime_ns change whenever the
    file is rewritten or replaced, and reading them costs no decoding or hashing."""
    try:
        st = os.stat(path)
    except OSError:
        return None  # it fails when decoded, with the reason
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def relative_outputs(stem: Path, suffixes, out: Path) -> list[str]:
    return [output_path(stem, s).relative_to(out).as_posix() for s in suffixes]


class History:
    """What an output folder's results.jsonl says: the fingerprint the folder holds,
    which queries are finished, and every file imrseg wrote there."""

    def __init__(self, out: Path):
        path = out / RESULTS_FILE
        if path.is_symlink():
            raise InputError(f"{show_path(path)}: is a symbolic link; imrseg keeps its log as a regular file "
                             "inside `out` (remove the link)")
        self.headers: list[dict] = []
        self.last: dict[str, tuple[str | None, dict]] = {}  # query -> (fingerprint then, its last row)
        self.written: set[str] = set()  # relative to `out`
        for row in read_results(path):
            if row.get("type") == "run":
                self.headers.append(row)
            elif row.get("type") == "query":
                self.last[row.get("query")] = (self.fingerprint, row)
            self.written.update(row.get("outputs") or ())

    @property
    def fingerprint(self) -> str | None:
        """The fingerprint of the folder's latest run (None: no run, or one from before fingerprints)."""
        return self.headers[-1].get("fingerprint") if self.headers else None

    def header(self, fingerprint: str) -> dict | None:
        return next((h for h in reversed(self.headers) if h.get("fingerprint") == fingerprint), None)

    def finished(self, query: Path, file: dict | None, stem: Path, suffixes, out: Path,
                 fingerprint: str) -> dict | None:
        """The row proving `query` finished, if it did: its latest row is done or
        skipped under this fingerprint, for this very file (path; `file`, its size and
        mtime) and mask, and every file this run needs was written then and is still there."""
        then, row = self.last.get(str(query), (None, None))
        if row is None or then != fingerprint or row.get("status") not in ("done", "skipped"):
            return None
        if file is None or row.get("query_file") != file or row.get("mask") != str(output_path(stem, MASK_SUFFIX)):
            return None
        if not set(relative_outputs(stem, suffixes, out)) <= set(row.get("outputs") or ()):
            return None
        return row if completed_outputs(stem, suffixes) else None


def rank_log(out: Path, rank: int) -> Path:
    """One rank's rows of a distributed run, merged into results.jsonl at the end."""
    return out / f".results.rank{rank}.jsonl"


def _by_query(rows: list[dict]) -> list[list[dict]]:
    """A rank's rows after its header, each query row with the rows written before it."""
    groups, pending = [], []
    for row in rows[1:]:
        pending.append(row)
        if row.get("type") == "query":
            groups.append(pending)
            pending = []
    return groups + [pending] if pending else groups


def merge_ranks(out: Path) -> Summary:
    """Gather the rank files in `out` into results.jsonl, in query order, remove them
    and total them: at the end of a distributed run, and at the start of any run
    after one was killed. The caller holds the folder's lock."""
    ranks = sorted((int(m[1]), out / m[0]) for m in map(_RANK_LOG.fullmatch, os.listdir(out)) if m)
    parts = [rows for rows in (read_results(path) for _, path in ranks) if rows]
    merged = Summary()
    if parts:
        with ResultsLog(out / RESULTS_FILE) as log:
            log.write({**parts[0][0], "rank": 0, "world": len(ranks)})
            groups = [_by_query(rows) for rows in parts]
            for i in range(max(map(len, groups))):  # rank r took items r, r + world, ...
                for part in groups:
                    for row in part[i] if i < len(part) else ():
                        log.write(row)
                        if row.get("type") == "query":
                            merged.add(Outcome(Path(row["query"]), row["status"],
                                               foreground_fraction=row["foreground_fraction"],
                                               seconds=row["seconds"], score=row.get("score")))
    for _, path in ranks:
        path.unlink()
    return merged


# Reading a folder back for the exports (COCO annotations, the review gallery): they start
# from results.jsonl and the files on disk rather than a run in memory, so they cover every
# query the folder holds, however many runs or processes made it, and need no model.

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
    history = History(out)
    if not history.headers:
        raise InputError(f"{show_path(path)}: no run header: not written by imrseg segment")
    queries = [_finished(out, row) for _, row in history.last.values() if row.get("status") in FINISHED]
    return FinishedRun(out, header_labels(history.headers[-1]), queries)


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
