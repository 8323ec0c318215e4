"""`results.jsonl`, the record of a folder run: a header row saying what the run
was (weights, label, supports, settings), then one row per query (path, mask,
status, foreground fraction, seconds, error). A distributed run writes one file
per rank and rank 0 merges them in query order."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..durable import ResultsLog, read_results

RESULTS_FILE = "results.jsonl"


@dataclass
class Outcome:
    query: Path
    status: str  # "done" | "skipped" | "failed"
    mask: Path | None = None
    foreground_fraction: float | None = None
    seconds: float | None = None
    error: str | None = None

    def row(self, steps: int) -> dict:
        return {"type": "query", "query": str(self.query), "status": self.status,
                "mask": str(self.mask) if self.mask else None,
                "foreground_fraction": self.foreground_fraction, "steps": steps,
                "seconds": self.seconds, "error": self.error}


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    interrupted: bool = False
    foreground: list = field(default_factory=list)
    seconds: list = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        setattr(self, outcome.status, getattr(self, outcome.status) + 1)
        if outcome.status == "done":
            self.foreground.append(outcome.foreground_fraction)
            self.seconds.append(outcome.seconds)

    def to_dict(self) -> dict:
        mean = (lambda xs: sum(xs) / len(xs) if xs else None)
        return {"done": self.done, "skipped": self.skipped, "failed": self.failed,
                "interrupted": self.interrupted, "mean_foreground_fraction": mean(self.foreground),
                "seconds_per_image": mean(self.seconds)}


def rank_log(out: Path, rank: int) -> Path:
    """One rank's rows of a distributed run, merged into results.jsonl at the end."""
    return out / f".results.rank{rank}.jsonl"


def merge_ranks(out: Path, world: int, interrupted: bool) -> Summary:
    """Rank 0: gather every rank's rows into results.jsonl, in query order, and total them."""
    rows = [read_results(rank_log(out, rank)) for rank in range(world)]
    merged = Summary(interrupted=interrupted)
    with ResultsLog(out / RESULTS_FILE) as log:
        log.write({**rows[0][0], "rank": 0, "world": world})
        queries = [[r for r in part if r.get("type") == "query"] for part in rows]
        for i in range(max(map(len, queries))):  # rank r took items r, r + world, ...
            for part in queries:
                if i < len(part):
                    log.write(part[i])
                    merged.add(Outcome(Path(part[i]["query"]), part[i]["status"],
                                       foreground_fraction=part[i]["foreground_fraction"],
                                       seconds=part[i]["seconds"]))
    for rank in range(world):
        rank_log(out, rank).unlink()
    return merged
