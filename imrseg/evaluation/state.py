"""Resumable evaluation: finished episodes are kept one JSON row each, so an
interrupted `imrseg eval` continues from its last finished episode."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..durable import ResultsLog, read_results
from ..errors import InputError
from ..data.episodes import Episode

STATE_VERSION = 1


class RunState:
    """Finished episodes of one evaluation setting, one JSON row each (append + fsync).

    The first row names the setting; rows hold the episode's class, query,
    supports and counts. Resuming checks that the episodes drawn again are the
    recorded ones, so a changed split or data set never mixes into old rows.
    """

    def __init__(self, path: Path, setting: dict):
        self.path = Path(path)
        rows = read_results(self.path)
        if rows and rows[0].get("setting") != setting:
            raise InputError(f"{self.path}: state of another evaluation setting; delete it to start over")
        self.rows = rows[1:]
        for number, row in enumerate(self.rows):
            if row.get("episode") != number:
                raise InputError(f"{self.path}: episode rows out of order at row {number + 2}; "
                                 "delete it to start over")
        self._log = ResultsLog(self.path)
        if not rows:
            self._log.write({"setting": setting})

    @staticmethod
    def key(setting: dict) -> str:
        return hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:24]

    def check(self, row: dict, episode: Episode) -> None:
        recorded = (row.get("class"), row.get("query"), row.get("supports"))
        if recorded != (episode.class_id, episode.query, list(episode.supports)):
            raise InputError(f"{self.path}: episode {episode.index} was {recorded[1]} (class {recorded[0]}) "
                             f"but is now {episode.query} (class {episode.class_id}); the split or seed "
                             "changed: delete the file to start over")

    def append(self, episode: Episode, inter: np.ndarray, union: np.ndarray) -> None:
        row = {"episode": episode.index, "class": episode.class_id, "query": episode.query,
               "supports": list(episode.supports), "inter": inter.tolist(), "union": union.tolist()}
        self._log.write(row)
        self.rows.append(row)

    def close(self) -> None:
        self._log.close()
