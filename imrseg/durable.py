"""Files that survive being killed mid-write.

Every file is written atomically (temporary file in the same folder, fsync,
`os.replace`), so a killed run leaves either the old file or the new one.
`ResultsLog` appends one JSON row at a time (runs, evaluation state);
`read_results` reads them back. `file_sha256` identifies a file's content.
`FolderLock` lets one writer at a time into a folder; only while holding it is a
killed writer's temporary file known to be stale, so only then is it removed."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from .errors import ImrsegError, InputError, one_line, show_path


try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

# Digests by (device, inode, size, mtime): a run hashes its weight files before loading
# them and the loaders hash them again; a file that changed gets a new key.
_digests: dict[tuple[int, int, int, int], str] = {}


def file_sha256(path: os.PathLike | str) -> str:
    """Hex sha256 of a file's content; InputError naming the file if it cannot be read."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if key not in _digests:
                digest = hashlib.sha256()
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
                _digests[key] = digest.hexdigest()
    except OSError as exc:
        raise InputError(f"{show_path(path)}: cannot read ({exc.strerror or one_line(exc)})") from None
    return _digests[key]


def _kind(mode: int) -> str:
    """What a file that is not a regular one is, for a message."""
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return kind
    return "not a regular file"


def open_regular(path: os.PathLike | str, flags: int, error: type[ImrsegError] = ImrsegError) -> int:
    """os.open of a file imrseg writes in place or reads back, only if it is a regular
    file: never through a symbolic link as the file itself (what imrseg writes stays
    where it is named), never waiting on a FIFO (opened non-blocking, then checked),
    never a folder or a device. Anything else there is an `error` naming the path and
    what is in the way; other OSErrors propagate."""
    path = Path(path)
    nonblock = getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags | nonblock | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError:
        with contextlib.suppress(OSError):
            mode = os.lstat(path).st_mode
            if not stat.S_ISREG(mode):
                raise _not_regular(path, mode, error) from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _not_regular(path, mode, error)
    if nonblock:
        os.set_blocking(fd, True)
    return fd


def _not_regular(path: Path, mode: int, error: type[ImrsegError]) -> ImrsegError:
    how = "remove the link" if stat.S_ISLNK(mode) else "move it"
    return error(f"{show_path(path)}: is {_kind(mode)}, not a regular file; imrseg reads and writes only regular "
                 f"files there ({how})")


def read_regular(path: os.PathLike | str) -> bytes:
    """The content of a regular file imrseg reads back, checked as `open_regular`
    does; InputError naming the file for anything else (FileNotFoundError propagates)."""
    path = Path(path)
    try:
        fd = open_regular(path, os.O_RDONLY | getattr(os, "O_BINARY", 0), InputError)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise InputError(f"{show_path(path)}: cannot read ({exc.strerror or one_line(exc)})") from None
    with open(fd, "rb") as fh:
        return fh.read()


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

    Writes `.name.imrseg-tmp-<random>` in the same folder (created if needed), fsyncs it and
    renames it over `path`. On any failure the temporary file is removed and the old
    file is untouched; OSError becomes ImrsegError naming the file.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while tmp is None:
            candidate = path.with_name(temporary_name(path.name))
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


TEMPORARY_MARK = ".imrseg-tmp-"
_TEMPORARY = re.compile(r"\..+" + re.escape(TEMPORARY_MARK) + r"[0-9a-f]{12}", re.DOTALL)


def temporary_name(name: str) -> str:
    """The name atomic_write_bytes writes the file `name` under before renaming it."""
    return f".{name}{TEMPORARY_MARK}{secrets.token_hex(6)}"


def is_temporary(name: str) -> bool:
    """True for the names atomic_write_bytes gives its temporary files."""
    return bool(_TEMPORARY.fullmatch(name))


def remove_temporaries(folders: Iterable[os.PathLike | str]) -> int:
    """Delete the temporary files a killed writer left in `folders` (not their
    subfolders); returns how many. Only for a caller holding the FolderLock that
    covers them: a temporary file of a live writer must not be touched."""
    removed = 0
    for folder in folders:
        try:
            names = os.listdir(folder)
        except OSError:  # not created yet, or gone: nothing of ours in it
            continue
        for name in names:
            if is_temporary(name):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))
                    removed += 1
    return removed


LOCK_FILE = ".imrseg.lock"


class FolderLock:
    """Holds `folder/.imrseg.lock` (flock) so that one imrseg run at a time writes
    into a folder; the operating system releases it when the process ends, however
    it ends. A folder this lock created and nothing else wrote to is removed again.
    ImrsegError if another process holds it or the folder cannot be written."""

    def __init__(self, folder: os.PathLike | str):
        self.folder = Path(folder)
        self._fd: int | None = None
        self._created = False

    def __enter__(self) -> FolderLock:
        path = self.folder / LOCK_FILE
        try:
            self._created = not self.folder.exists()
            self.folder.mkdir(parents=True, exist_ok=True)
            self._fd = open_regular(path, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise ImrsegError(f"{show_path(self.folder)}: cannot write ({exc.strerror or one_line(exc)})") from None
        try:
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                msvcrt.locking(self._fd, msvcrt.LK_NBLCK, 1)
        except OSError as exc:
            os.close(self._fd)
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise ImrsegError(f"{show_path(self.folder)}: another imrseg run is writing into this folder; "
                                  "wait for it to finish or choose another output folder") from None
            raise ImrsegError(f"{show_path(path)}: cannot lock ({exc.strerror or one_line(exc)})") from None
        return self

    def __exit__(self, *exc_info) -> None:
        with contextlib.suppress(OSError):
            if self._created and os.listdir(self.folder) == [LOCK_FILE]:
                os.unlink(self.folder / LOCK_FILE)
                self.folder.rmdir()
        os.close(self._fd)


def finite_json(value, **options) -> str:
    """`value` as JSON (numpy values and paths allowed); ImrsegError rather than the
    tokens NaN or Infinity, which JSON does not have. ASCII escapes keep any file name
    valid JSON, even undecodable ones (lone surrogates), unless `options` say otherwise."""
    try:
        return json.dumps(value, default=_json_default, allow_nan=False, **options)
    except ValueError as exc:
        raise ImrsegError(f"refusing to record a number that is not finite ({one_line(exc)})") from None


def _json_default(value):
    """Let rows hold numpy numbers/arrays and paths, as the commands produce them."""
    import numpy as np  # here: commands declare their options without numpy

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
    earlier killed run, so new rows always start on a line of their own. Only a regular
    file is opened (`open_regular`: a link is never followed, a FIFO never waited on),
    and one with more than one hard link is first replaced by a copy of its own, so
    an append never lands in another folder that shares it.
    Use as a context manager, or call close().
    """

    def __init__(self, path: os.PathLike | str):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0)
            fd = open_regular(self.path, flags)
            if os.fstat(fd).st_nlink > 1:
                # Shared with another folder (a `cp -al` copy, an rsync --link-dest snapshot): appending
                # would write into that one too, so this folder gets a copy of its own first.
                with open(fd, "rb") as shared:
                    atomic_write_bytes(self.path, shared.read())
                fd = open_regular(self.path, flags)
            self._file = open(fd, "r+b", buffering=0)
            self._drop_torn_tail()
        except OSError as exc:
            raise ImrsegError(f"{show_path(self.path)}: cannot write ({exc.strerror or one_line(exc)})") from exc

    def _drop_torn_tail(self) -> None:
        """Cut the file after its last newline (writes append: O_APPEND)."""
        fh = self._file
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
            os.fsync(fh.fileno())

    def write(self, row: Mapping) -> None:
        """Append `row` (JSON-serialisable; numpy values and paths allowed) as one line."""
        self.write_many([row])

    def write_many(self, rows: Iterable[Mapping]) -> None:
        """Append `rows` as lines with one write and one fsync (a group commit): a
        kill leaves a prefix of them, the last one possibly torn and then dropped."""
        data = b"".join(finite_json(row).encode("ascii") + b"\n" for row in rows)
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


def read_results(path: os.PathLike | str, numbered: bool = False) -> list:
    """Rows of a ResultsLog file in order (with `numbered`, as (line, row)); [] if it
    does not exist. A last line without its newline (a write cut short by a kill) is
    ignored; any other line that is not a JSON object raises InputError naming file and
    line, as does a number JSON does not have (NaN, Infinity), or anything but a
    regular file in its place (`read_regular`)."""
    path = Path(path)
    try:
        data = read_regular(path)
    except FileNotFoundError:
        return []
    rows = []
    for number, line in enumerate(data.split(b"\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:
            raise InputError(f"{show_path(path)}:{number}: not a JSON row ({one_line(exc)})") from None
        if not isinstance(row, dict):
            raise InputError(f"{show_path(path)}:{number}: not a JSON object")
        rows.append((number, row) if numbered else row)
    return rows


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")
