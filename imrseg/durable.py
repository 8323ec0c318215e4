"""Files that survive being killed mid-write.

Every file is written atomically (temporary file in the same folder, fsync,
`os.replace`), so a killed run leaves either the old file or the new one.
`ResultsLog` appends one JSON row at a time (runs, evaluation state);
`read_results` reads them back. `file_sha256` identifies a file's content."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .errors import ImrsegError, InputError, one_line, show_path


def file_sha256(path: os.PathLike | str) -> str:
    """Hex sha256 of a file's content; InputError naming the file if it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise InputError(f"{show_path(path)}: cannot read ({exc.strerror or one_line(exc)})") from None
    return digest.hexdigest()


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable; some filesystems (and Windows) cannot open folders, which is fine."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: os.PathLike | str, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a part.

    Writes `.name.tmp-<random>` in the same folder (created if needed), fsyncs it and
    renames it over `path`. On any failure the temporary file is removed and the old
    file is untouched; OSError becomes ImrsegError naming the file.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while tmp is None:
            candidate = path.with_name(f".{path.name}.tmp-{secrets.token_hex(6)}")
            try:
                # 0o666 so the umask decides permissions, as for any other file the user creates.
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
                fd = os.open(candidate, flags, 0o666)
            except FileExistsError:
                continue
            tmp = candidate
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if isinstance(exc, OSError):
            raise ImrsegError(f"{show_path(path)}: cannot write ({exc.strerror or one_line(exc)})") from exc
        raise
    _fsync_dir(path.parent)


_TEMPORARY = re.compile(r"\..+\.tmp-[0-9a-f]{12}")


def remove_stale_temporaries(out_dir: os.PathLike | str) -> int:
    """Delete temporary files that a killed run left under `out_dir` (only names
    atomic_write_bytes makes); returns how many."""
    removed = 0
    for folder, _dirs, files in os.walk(out_dir):
        for name in files:
            if _TEMPORARY.fullmatch(name):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))
                    removed += 1
    return removed


def _json_default(value):
    """Let rows hold numpy numbers/arrays and paths, as the commands produce them."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class ResultsLog:
    """Append-only JSON Lines file, one row per query, safe against being killed.

    Each row goes to disk as one complete line in a single write, then fsync; a row
    counts only once its newline is written. Opening drops a torn last line left by an
    earlier killed run, so new rows always start on a line of their own.
    Use as a context manager, or call close().
    """

    def __init__(self, path: os.PathLike | str):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._drop_torn_tail()
            self._file = open(self.path, "ab", buffering=0)
        except OSError as exc:
            raise ImrsegError(f"{show_path(self.path)}: cannot write ({exc.strerror or one_line(exc)})") from exc

    def _drop_torn_tail(self) -> None:
        try:
            fh = open(self.path, "r+b")
        except FileNotFoundError:
            return
        with fh:
            end = fh.seek(0, os.SEEK_END)
            pos = end
            while pos > 0:
                start = max(0, pos - 65536)
                fh.seek(start)
                newline = fh.read(pos - start).rfind(b"\n")
                if newline >= 0:
                    pos = start + newline + 1
                    break
                pos = start
            if pos != end:
                fh.truncate(pos)
                fh.flush()
                os.fsync(fh.fileno())

    def write(self, row: Mapping) -> None:
        """Append `row` (JSON-serialisable; numpy values and paths allowed) as one line."""
        # ASCII escapes keep any file name valid JSON, even undecodable ones (lone surrogates).
        data = (json.dumps(row, default=_json_default) + "\n").encode("ascii")
        try:
            view = memoryview(data)
            while view:  # a regular file takes it in one write; the loop covers a short write
                view = view[self._file.write(view):]
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise ImrsegError(f"{show_path(self.path)}: cannot write ({exc.strerror or one_line(exc)})") from exc

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ResultsLog:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_results(path: os.PathLike | str) -> list[dict]:
    """Rows of a ResultsLog file in order; [] if it does not exist.

    A last line without its newline (a write cut short by a kill) is ignored; any
    other line that is not a JSON object raises InputError naming file and line.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise InputError(f"{show_path(path)}: cannot read ({exc.strerror or one_line(exc)})") from exc
    rows = []
    for number, line in enumerate(data.split(b"\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise InputError(f"{show_path(path)}:{number}: not a JSON row ({one_line(exc)})") from None
        if not isinstance(row, dict):
            raise InputError(f"{show_path(path)}:{number}: not a JSON object")
        rows.append(row)
    return rows
