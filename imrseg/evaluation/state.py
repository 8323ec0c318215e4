"""Resumable evaluation: finished episodes are kept one JSON row each, so an
interrupted `imrseg eval` continues from its last finished episode.

Each evaluation setting has a folder of its own in the cache, `eval/<key>/`, where
the key hashes everything the numbers depend on. The run holds that folder's lock
(`guard.OwnedFolder`) while it evaluates: two runs of the same setting never
append to one state (the second is refused at once), while runs of different
settings (other folds, shots, weights) go on side by side. Rows are read back
through `guard.Fields`: a damaged or crafted state is a one-line error naming the
file and line, never an internal error and never mixed into the figures."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

from ..data.episodes import Episode
from ..errors import InputError, show_path
from ..guard import Fields, OwnedFolder

STATE_VERSION = 2
STATE_FILE = "state.jsonl"
# A pixel count above this is no image's (it also keeps the sums within int64).
MAX_PIXELS = 1 << 48


@dataclass(frozen=True)
class FinishedEpisode:
    """A state row as read back: which episode it was, and its pixel counts
    ([background, foreground] intersection and union)."""

    index: int
    class_id: int
    query: str
    supports: tuple[str, ...]
    inter: tuple[int, int]
    union: tuple[int, int]


class RunState:
    """Finished episodes of one evaluation setting under `cache_dir/eval/<key>/`,
    one JSON row each (append + fsync), the folder locked while it is open.

    The first row names the setting; rows hold the episode's class, query,
    supports and counts. Resuming checks that the episodes drawn again are the
    recorded ones, so a changed split or data set never mixes into old rows.
    Close it (or use it as a context manager) to let another run continue it.
    """

    def __init__(self, cache_dir: os.PathLike | str, setting: dict):
        with contextlib.ExitStack() as stack:
            # The way to the folder, below the cache, is checked for links as the files in it are.
            with OwnedFolder(cache_dir, parameter="cache_dir", lock=False) as cache:
                where = cache.path(f"eval/{self.key(setting)}")
            folder = stack.enter_context(OwnedFolder(where, parameter="cache_dir"))
            self.path = folder.path(STATE_FILE)
            rows = Fields.rows(self.path)
            if rows and rows[0].raw("setting") != setting:
                raise InputError(f"{show_path(self.path)}: state of another evaluation setting; "
                                 f"delete {show_path(folder.root)} to start over")
            try:
                self.rows = [read_row(row, number) for number, row in enumerate(rows[1:])]
            except InputError as exc:
                raise InputError(f"{exc}; delete {show_path(folder.root)} to start over") from None
            self._log = stack.enter_context(folder.log(STATE_FILE))
            if not rows:
                self._log.write({"setting": setting})
            self._held = stack.pop_all()

    @staticmethod
    def key(setting: dict) -> str:
        return hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:24]

    def check(self, row: FinishedEpisode, episode: Episode) -> None:
        if (row.class_id, row.query, row.supports) != (episode.class_id, episode.query, tuple(episode.supports)):
            raise InputError(f"{show_path(self.path)}: episode {episode.index} was {row.query} (class {row.class_id}) "
                             f"but is now {episode.query} (class {episode.class_id}); the split or seed "
                             "changed: delete the file to start over")

    def append(self, episode: Episode, inter: np.ndarray, union: np.ndarray) -> None:
        row = {"episode": episode.index, "class": episode.class_id, "query": episode.query,
               "supports": list(episode.supports), "inter": inter.tolist(), "union": union.tolist()}
        self._log.write(row)
        self.rows.append(FinishedEpisode(episode.index, episode.class_id, episode.query, tuple(episode.supports),
                                         tuple(row["inter"]), tuple(row["union"])))

    def close(self) -> None:
        self._held.close()

    def __enter__(self) -> RunState:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_row(row: Fields, number: int) -> FinishedEpisode:
    """The state's episode row `number` (0-based), every field checked."""
    index = row.integer("episode", 0)
    if index != number:
        raise InputError(f"{row.where}: episode rows out of order (episode {index} where {number} belongs)")
    inter, union = _counts(row, "inter"), _counts(row, "union")
    if any(i > u for i, u in zip(inter, union)):
        raise InputError(f"{row.where}: field \"inter\" exceeds field \"union\" ({list(inter)} > {list(union)})")
    return FinishedEpisode(index, row.integer("class", 0), row.text("query"), tuple(row.texts("supports")),
                           inter, union)


def _counts(row: Fields, key: str) -> tuple[int, int]:
    """[background, foreground] pixel counts: two whole numbers from 0 to MAX_PIXELS."""
    value = row.raw(key)
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_PIXELS for v in value)):
        shown = repr(value)
        raise InputError(f"{row.where}: field \"{key}\" must be two pixel counts, "
                         f"not {show_path(shown if len(shown) <= 60 else shown[:57] + '...')}")
    return value[0], value[1]
