"""`results.jsonl`, the record of an output folder, and what it proves.

Each run appends a header row (`type` "run": weights, label, supports, the classes,
settings and the fingerprint of everything that shapes a mask, see `identity`),
then, in query order, one `type` "query" row per query: path as given, its resolved
location (`resolved`, which identifies it: the same file reached by another path is
the same query), its path relative to the folder it was found in (`file_name`), its
size and mtime when planned, mask, the files written (`outputs`, relative to the
output folder, the mask last), status, foreground fraction, the score
(`imrseg.scores`), per class its fraction and score (`classes`), steps, seconds,
error. Before a batch's files are written a `type` "writing" row names them, so even
a killed run's files are known as imrseg's and never read back as inputs. A
distributed run writes one file per rank and rank 0 merges them in query order.

Everything is read back through `guard.Fields`: a row edited by hand or by an
attacker (a path out of the folder, a field of the wrong type) is a one-line error
naming the file, the line and the field."""
from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import ContextManager

from ..errors import InputError, show_path
from ..guard import Fields, OwnedFolder
from ..multiclass import check_class_count, check_distinct_labels
from .masks import read_index_mask
from .naming import MASK_SUFFIX, completed_outputs, output_path, stem_of

RESULTS_FILE = "results.jsonl"
STATUSES = ("done", "skipped", "failed")
# A person's word on a finished query's mask (`imrseg app`): a row without one is a proposal.
REVIEWS = ("proposed", "accepted", "corrected", "rejected")
FINISHED = ("done", "skipped")
_RANK_LOG = re.compile(r"\.results\.rank(\d+)\.jsonl")


def query_identity(query: os.PathLike | str) -> str:
    """What identifies a query from run to run: its resolved location, so the same
    file given by an absolute path, or from another working folder, is the same query."""
    return os.path.realpath(query)


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
    review: str | None = None  # one of REVIEWS; None: none recorded (a proposal)

    def row(self) -> dict:
        row = {"type": "query", "query": str(self.query), "resolved": query_identity(self.query),
               "file_name": self.file_name, "status": self.status,
               "mask": str(self.mask) if self.mask else None, "outputs": self.outputs,
               "query_file": self.query_file, "foreground_fraction": self.foreground_fraction,
               "score": self.score, "classes": self.classes, "steps": self.steps, "seconds": self.seconds,
               "error": self.error}
        return row if self.review is None else {**row, "review": self.review}

    @classmethod
    def skipped(cls, query: Path, mask: Path, finished: QueryRow) -> Outcome:
        """A query kept from an earlier run (its mask `mask`): its row carried forward."""
        return cls(query, "skipped", mask, finished.foreground_fraction, steps=finished.steps,
                   query_file=finished.query_file, outputs=list(finished.outputs), file_name=finished.file_name,
                   score=finished.score, classes=finished.classes or None, review=finished.review)


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


@dataclass(frozen=True)
class QueryRow:
    """A query row read back, every field checked; `where` names its file and line,
    `index` its place among the file's rows (a later row is a later word)."""

    where: str
    index: int
    query: str  # the query's path as the run was given it
    identity: str  # its resolved location (`query_identity`)
    status: str
    outputs: tuple[str, ...]  # relative to the output folder, the mask last
    file_name: str | None  # relative to its query root (posix), as dataset tools want it
    query_file: dict | None
    foreground_fraction: float | None
    score: float | None
    classes: dict  # label -> {"fraction": ..., "score": ...}; empty when the run did not record them
    steps: int | None
    seconds: float | None
    review: str | None = None  # one of REVIEWS, when a person gave one

    @classmethod
    def read(cls, row: Fields, index: int = 0) -> QueryRow:
        query = row.text("query")
        try:  # rows of an imrseg before `resolved`: resolved from here, as they were most likely run
            identity = row.text("resolved", optional=True) or query_identity(query)
        except ValueError:  # a NUL character
            raise InputError(f"{row.where}: field \"query\" is not a path") from None
        file = row.fields("query_file", optional=True)
        classes = {label: {"fraction": c.number("fraction"), "score": c.number("score", optional=True)}
                   for label, c in row.mapping("classes", optional=True).items()}
        return cls(row.where, index, query, identity, row.text("status", choices=STATUSES),
                   tuple(row.relatives("outputs", optional=True)), row.relative("file_name", optional=True),
                   file and {"size": file.integer("size", 0), "mtime_ns": file.integer("mtime_ns")},
                   row.number("foreground_fraction", optional=True), row.number("score", optional=True),
                   classes, row.integer("steps", 1, optional=True), row.number("seconds", 0, optional=True),
                   row.text("review", choices=REVIEWS, optional=True))

    @property
    def mask(self) -> str | None:
        """The mask, relative to the output folder: written last, listed last."""
        return self.outputs[-1] if self.outputs else None

    @property
    def stem(self) -> str:
        """The output stem: the mask's path without `.png`."""
        return stem_of(self.mask).as_posix()


class History:
    """What an output folder's results.jsonl says: the fingerprint the folder holds,
    which queries are finished, and every file imrseg wrote there (the log itself
    included). Reading it needs no lock: rows are appended whole."""

    def __init__(self, out: os.PathLike | str):
        self.path = Path(out) / RESULTS_FILE
        self.headers: list[Fields] = []
        self.last: dict[str, tuple[str | None, QueryRow]] = {}  # identity -> (fingerprint then, its last row)
        self.written: set[str] = set()  # relative to `out`
        for index, row in enumerate(Fields.rows(self.path)):
            kind = row.raw("type")
            if kind == "run":
                self.headers.append(row)
                self.written.add(RESULTS_FILE)
            elif kind == "query":
                query = QueryRow.read(row, index)
                self.last[query.identity] = (self.fingerprint, query)
                self.written.update(query.outputs)
            elif kind == "writing":
                self.written.update(row.relatives("outputs"))
        with contextlib.suppress(OSError):  # an empty log: a run that stopped before its header
            if not self.headers and self.path.stat().st_size == 0:
                self.written.add(RESULTS_FILE)

    @property
    def fingerprint(self) -> str | None:
        """The fingerprint of the folder's latest run (None: no run, or one from before fingerprints)."""
        return self.headers[-1].text("fingerprint", optional=True) if self.headers else None

    def header(self, fingerprint: str) -> Fields | None:
        return next((h for h in reversed(self.headers) if h.raw("fingerprint") == fingerprint), None)

    def finished(self, query: Path, file: dict | None, stem: Path, suffixes, out: Path,
                 fingerprint: str) -> QueryRow | None:
        """The row proving `query` finished, if it did: its latest row is done or
        skipped under this fingerprint, for this very file (its location; `file`, its
        size and mtime) and mask, and every file this run needs was written then and is
        still there."""
        then, row = self.last.get(query_identity(query), (None, None))
        if row is None or then != fingerprint or row.status not in FINISHED:
            return None
        needed = relative_outputs(stem, suffixes, out)
        if file is None or row.query_file != file or row.mask != needed[-1] or not set(needed) <= set(row.outputs):
            return None
        return row if completed_outputs(stem, suffixes) else None


def rank_log(rank: int) -> str:
    """One rank's rows of a distributed run (relative to the output folder), merged
    into results.jsonl at the end."""
    return f".results.rank{rank}.jsonl"


def _by_query(rows: list[Fields]) -> list[list[Fields]]:
    """A rank's rows after its header, each query row with the rows written before it."""
    groups, pending = [], []
    for row in rows[1:]:
        pending.append(row)
        if row.raw("type") == "query":
            groups.append(pending)
            pending = []
    return groups + [pending] if pending else groups


def merge_ranks(folder: OwnedFolder) -> Summary:
    """Gather the rank files in the folder into results.jsonl, in query order, remove
    them and total them: at the end of a distributed run, and at the start of any run
    after one was killed. The caller holds the folder's lock."""
    ranks = sorted((int(m[1]), m[0]) for m in map(_RANK_LOG.fullmatch, os.listdir(folder.root)) if m)
    parts = [rows for rows in (Fields.rows(folder.path(name)) for _, name in ranks) if rows]
    merged = Summary()
    if parts:
        ordered = [{**parts[0][0].row, "rank": 0, "world": len(ranks)}]
        groups = [_by_query(rows) for rows in parts]
        for i in range(max(map(len, groups))):  # rank r took items r, r + world, ...
            for part in groups:
                for row in part[i] if i < len(part) else ():
                    ordered.append(row.row)
                    if row.raw("type") == "query":
                        query = QueryRow.read(row)
                        merged.add(Outcome(Path(query.query), query.status, seconds=query.seconds,
                                           foreground_fraction=query.foreground_fraction, score=query.score))
        with folder.log(RESULTS_FILE) as log:
            log.write_many(ordered)
    for _, name in ranks:
        folder.path(name).unlink()
    return merged


# Reading a folder back for the exports (COCO annotations, the review gallery): they start
# from results.jsonl and the files on disk rather than a run in memory, so they cover every
# query the folder holds, however many runs or processes made it, and need no model.


def opened(out: OwnedFolder | os.PathLike | str) -> ContextManager[OwnedFolder]:
    """`out` as an OwnedFolder to read back and write exports into: the one a run
    holds, or the folder opened here (its lock taken; never writing over a file
    imrseg did not write there)."""
    if isinstance(out, OwnedFolder):
        return contextlib.nullcontext(out)
    return OwnedFolder(out, parameter="out", overwrite=None)


@dataclass(frozen=True)
class FinishedRun:
    folder: OwnedFolder
    labels: list[str]  # class i + 1 of the masks is labels[i]
    queries: list[QueryRow]  # each with its file_name

    @property
    def out(self) -> Path:
        """The output folder as it was given."""
        return self.folder.given

    @property
    def multiclass(self) -> bool:
        return len(self.labels) > 1

    def mask(self, query: QueryRow):
        """The query's mask as class indices (`masks.read_index_mask`), read inside the folder only."""
        return read_index_mask(self.out / query.mask, self.folder.read_bytes(query.mask))


def header_labels(header: Fields) -> list[str]:
    """The classes a run header names, in mask order: as many as one indexed mask
    holds (`multiclass.MAX_CLASSES`), each named once."""
    labels = [c.text("label") for c in header.items("classes", optional=True)] or [header.text("label")]
    try:
        check_class_count(len(labels))
        check_distinct_labels(labels)
    except InputError as exc:
        raise InputError(f"{header.where}: {exc}") from None
    return labels


def read_finished(folder: OwnedFolder) -> FinishedRun:
    """The finished queries of an output folder, each with its latest row, in the order
    they were first run; of two rows naming the same mask (the same query given by
    another path by an older imrseg), the later. InputError when there is no run, a
    row is malformed, or a mask it lists is gone."""
    path = folder.given / RESULTS_FILE
    if not os.path.lexists(path):
        raise InputError(f"{show_path(folder.given)}: no {RESULTS_FILE}: not an imrseg output folder")
    history = History(folder.given)
    if not history.headers:
        raise InputError(f"{show_path(path)}: no run header: not written by imrseg segment")
    labels = header_labels(history.headers[-1])
    by_mask: dict[str, QueryRow] = {}
    for _, row in history.last.values():
        if row.status in FINISHED:
            row = _finished(folder, row)
            if row.mask not in by_mask or by_mask[row.mask].index < row.index:
                by_mask[row.mask] = row
    return FinishedRun(folder, labels, list(by_mask.values()))


def _finished(folder: OwnedFolder, row: QueryRow) -> QueryRow:
    """A finished row with its file_name (derived from the mask for rows of an older
    imrseg), after checking that its mask is there."""
    if row.mask is None or not row.mask.endswith(MASK_SUFFIX) or PurePosixPath(row.mask).name == MASK_SUFFIX:
        raise InputError(f"{row.where}: field \"outputs\" must list the query's mask (a {MASK_SUFFIX} file) last")
    if not os.path.lexists(folder.path(row.mask)):  # a link in the way is refused
        raise InputError(f"{show_path(folder.given / row.mask)}: the mask of {show_path(row.query)} is missing; "
                         "run the segment command again to redo it")
    return replace(row, file_name=row.file_name or str(PurePosixPath(row.mask).with_suffix(Path(row.query).suffix)))
