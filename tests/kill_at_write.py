"""Run an `imrseg` command that is killed (SIGKILL) at its N-th write into a folder:
the wrapper of tests/test_training_guard.py's kill-at-every-write test.

    python kill_at_write.py FOLDER WHEN LOG -- train --out FOLDER ...

Every write into FOLDER counts: each file written atomically
(`durable.atomic_write_bytes`) and each group of rows appended to a log
(`durable.ResultsLog.write_many`, e.g. the folder's manifest). Each is appended to
LOG as it starts, one JSON line: its number, its kind ("file" or "log") and its
path relative to FOLDER. WHEN is N, the N-th write (0: none), or PATH#K, the K-th
write to PATH (relative to FOLDER). At that write the process leaves what a kill
in the middle of it leaves, then kills itself: for a file, its temporary file next
to it holding half of the new content, the file itself as it was; for a log, the
first half of the rows' bytes appended (a torn last line).
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import imrseg.durable as durable


def main() -> None:
    folder, when, log = Path(sys.argv[1]).resolve(), sys.argv[2], sys.argv[3]
    command = sys.argv[sys.argv.index("--") + 1:]
    count, per_path = 0, {}
    atomic_write_bytes, write_many = durable.atomic_write_bytes, durable.ResultsLog.write_many

    def counted(kind: str, path) -> bool:
        """Whether this write into FOLDER is the one to die at (logged either way)."""
        nonlocal count
        path = Path(path).resolve()
        if folder not in path.parents:
            return False
        name = path.relative_to(folder).as_posix()
        count += 1
        per_path[name] = per_path.get(name, 0) + 1
        with open(log, "a") as fh:
            fh.write(json.dumps({"write": count, "kind": kind, "path": name}) + "\n")
        return when in (str(count), f"{name}#{per_path[name]}")

    def atomic_write(path, data: bytes) -> None:
        if counted("file", path):
            path = Path(path)
            tmp = path.with_name(f".{path.name}{durable.TEMPORARY_MARK}{'0' * 12}")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(data[:len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        atomic_write_bytes(path, data)

    def log_rows(self, rows) -> None:
        rows = list(rows)
        if counted("log", self.path):
            data = b"".join(durable.finite_json(row).encode("ascii") + b"\n" for row in rows)
            with open(self.path, "ab") as fh:
                fh.write(data[:len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        write_many(self, rows)

    # Before any other imrseg module imports the function, so every one gets this one.
    durable.atomic_write_bytes = atomic_write
    durable.ResultsLog.write_many = log_rows
    from imrseg.cli import main as imrseg_main

    sys.argv = ["imrseg", *command]
    imrseg_main()


if __name__ == "__main__":
    main()
