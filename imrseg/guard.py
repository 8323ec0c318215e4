"""The one guard for every folder imrseg writes into and every file it reads back.

`OwnedFolder` is how a command writes: it holds the folder's lock (one run at a
time), names files only by plain relative paths that stay inside, refuses symbolic
links anywhere below the folder, writes atomically, and never replaces a file that
imrseg did not write there. Which files those are, the folder's manifest
(`.imrseg-files`, one JSON row per file) says, together with what a command already
knows as its own (`known`: a results.jsonl's rows). A name enters the manifest just
before its file is written (`claim`, which `write` and `log` call), never when a
command starts: what a command wants to write is only `check`ed up front, so one
that fails leaves no claim on a file it never wrote. Every name is checked against
the filesystem's limit with imrseg's temporary-file name around it, and every file
is read back only if it is a regular file (`durable.read_regular`).

`Fields` is how a command reads back a row or document it wrote: every value is
checked for its type and range (numbers finite, paths plain and relative) and
anything else is a one-line error naming the file, the line and the field, so a
file edited by hand or by an attacker never makes imrseg read, copy or write
anything outside the folder."""
from __future__ import annotations

import contextlib
import math
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

from .durable import (LOCK_FILE, FolderLock, ResultsLog, atomic_write_bytes, is_temporary, read_regular,
                      read_results, remove_temporaries, temporary_name)
from .errors import ImrsegError, InputError, one_line, param, show_path

MANIFEST = ".imrseg-files"


def plain_relative(value, where: str) -> str:
    """`value` as a plain relative posix path (no `..`, no `.`, not absolute, no empty
    part): the only kind imrseg records or reads back for a file inside a folder."""
    if not isinstance(value, str) or not value or "\0" in value:
        raise InputError(f"{where} must be a relative path, not {_shown(value)}")
    parts = value.split("/")
    if (value.startswith("/") or any(part in ("", ".", "..") for part in parts)
            or PurePosixPath(value).is_absolute() or (len(value) > 1 and value[1] == ":")):
        raise InputError(f"{where} must be a plain relative path inside the folder, not {_shown(value)}")
    return value


def _name_max(folder: Path) -> int:
    """The longest file name, in bytes, the filesystem of `folder` takes (255 where it does not say)."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (AttributeError, ValueError, OSError):  # Windows has no pathconf; some filesystems do not tell
        return 255


def _shown(value) -> str:
    text = repr(value)
    return show_path(text if len(text) <= 60 else text[:57] + "...")


class Fields:
    """A JSON object read back from a file imrseg wrote, with checked accessors.
    `where` names it in errors ("results.jsonl:3"); a missing required field, or one
    of the wrong type or range, is an InputError naming the file, line and field."""

    def __init__(self, row, where: str):
        if not isinstance(row, Mapping):
            raise InputError(f"{where}: not a JSON object")
        self.row, self.where = row, where

    @classmethod
    def rows(cls, path: os.PathLike | str) -> list[Fields]:
        """Every row of a JSON Lines file (see `durable.read_results`); [] if there is none."""
        path = Path(path)
        return [cls(row, f"{show_path(path)}:{line}") for line, row in read_results(path, numbered=True)]

    def _error(self, key: str, what: str) -> InputError:
        return InputError(f"{self.where}: field \"{key}\" must be {what}, not {_shown(self.row.get(key))}")

    def has(self, key: str) -> bool:
        return self.row.get(key) is not None

    def _get(self, key: str, optional: bool, what: str):
        value = self.row.get(key)
        if value is None and not optional:
            raise self._error(key, what)
        return value

    def raw(self, key: str, default=None):
        """A value imrseg only compares or copies, never uses as a path or number."""
        return self.row.get(key, default)

    def text(self, key: str, *, choices: Iterable[str] | None = None, optional: bool = False) -> str | None:
        choices = tuple(choices) if choices is not None else None
        what = f"one of {', '.join(map(repr, choices))}" if choices else "text"
        value = self._get(key, optional, what)
        if value is not None and (not isinstance(value, str) or (choices and value not in choices)):
            raise self._error(key, what)
        return value

    def number(self, key: str, low: float | None = None, high: float | None = None, *,
               optional: bool = False) -> float | None:
        what = "a finite number" + (f" from {low}" if low is not None else "") + (
            f" to {high}" if high is not None else "")
        value = self._get(key, optional, what)
        if value is None:
            return None
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or (low is not None and value < low) or (high is not None and value > high)):
            raise self._error(key, what)
        return float(value)

    def integer(self, key: str, low: int | None = None, *, optional: bool = False) -> int | None:
        what = "a whole number" + (f" of {low} or more" if low is not None else "")
        value = self._get(key, optional, what)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
            raise self._error(key, what)
        return value

    def flag(self, key: str, *, optional: bool = False) -> bool | None:
        value = self._get(key, optional, "true or false")
        if value is not None and not isinstance(value, bool):
            raise self._error(key, "true or false")
        return value

    def relative(self, key: str, *, optional: bool = False) -> str | None:
        value = self._get(key, optional, "a relative path")
        return None if value is None else plain_relative(value, f"{self.where}: field \"{key}\"")

    def _list(self, key: str, optional: bool, what: str) -> list:
        value = self._get(key, optional, what)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self._error(key, what)
        return value

    def texts(self, key: str, *, optional: bool = False) -> list[str]:
        values = self._list(key, optional, "a list of text")
        if not all(isinstance(v, str) for v in values):
            raise self._error(key, "a list of text")
        return values

    def relatives(self, key: str, *, optional: bool = False) -> list[str]:
        return [plain_relative(v, f"{self.where}: field \"{key}\"")
                for v in self._list(key, optional, "a list of relative paths")]

    def fields(self, key: str, *, optional: bool = False) -> Fields | None:
        value = self._get(key, optional, "an object")
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise self._error(key, "an object")
        return Fields(value, f"{self.where}: field \"{key}\"")

    def items(self, key: str, *, optional: bool = False) -> list[Fields]:
        values = self._list(key, optional, "a list of objects")
        if not all(isinstance(v, Mapping) for v in values):
            raise self._error(key, "a list of objects")
        return [Fields(v, f"{self.where}: field \"{key}\" item {i + 1}") for i, v in enumerate(values)]

    def mapping(self, key: str, *, optional: bool = False) -> dict[str, Fields]:
        """An object whose values are objects, keyed by text (e.g. per class)."""
        value = self.fields(key, optional=optional)
        if value is None:
            return {}
        out = {}
        for name, item in value.row.items():
            if not isinstance(item, Mapping):
                raise InputError(f"{value.where}: {_shown(name)} must be an object, not {_shown(item)}")
            out[name] = Fields(item, f"{value.where}: {_shown(name)}")
        return out


class OwnedFolder:
    """A folder imrseg writes into, for the duration of a `with` block.

    `parameter` names the argument that chose it (for messages). `overwrite`: True
    lets a file imrseg did not write be replaced; False or None refuse it, False
    telling the user that `overwrite` would allow it (the command has the option),
    None not. `known`: relative paths already known as imrseg's (a results.jsonl's
    rows). `lock`: False for the ranks of a distributed run other than the first,
    which writes under its lock."""

    def __init__(self, root: os.PathLike | str, *, parameter: str = "out", overwrite: bool | None = None,
                 known: Iterable[str] = (), lock: bool = True):
        self.given = Path(root)
        self.parameter, self.overwrite, self.lock = parameter, overwrite, lock
        self._known = set(known)
        self._held: contextlib.ExitStack | None = None

    def __enter__(self) -> OwnedFolder:
        given = self.given
        if given.exists() and not given.is_dir():
            raise ImrsegError(f"{show_path(given)}: exists and is not a folder (`{self.parameter}`)")
        self._held = contextlib.ExitStack()
        try:
            if self.lock:
                self._held.enter_context(FolderLock(given))
            else:
                try:
                    given.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise ImrsegError(f"{show_path(given)}: cannot write ({exc.strerror or one_line(exc)})") from None
            # The folder is where the user's path leads now; everything below it is checked link by link.
            self.root = given.resolve()
            self._name_max = _name_max(self.root)
            self._owned = set(self._known)
            for row in Fields.rows(self.root / MANIFEST):
                self._owned.add(row.relative("file"))
        except BaseException:
            self._held.close()  # a folder that cannot be opened is not left locked
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._held.close()

    def relative(self, path: os.PathLike | str) -> str:
        """`path` (absolute, or relative to the folder) as a plain relative path inside it;
        text is taken as it is written, so `./a` or `a//b` is refused as read back."""
        if isinstance(path, str) and not os.path.isabs(path):
            return plain_relative(path, show_path(path) or "''")
        path = Path(path)
        if path.is_absolute():
            for base in (self.root, self.given.absolute()):
                with contextlib.suppress(ValueError):
                    return plain_relative(path.relative_to(base).as_posix(), show_path(path))
            raise ImrsegError(f"{show_path(path)}: outside {param(self.parameter)} {show_path(self.given)}")
        return plain_relative(path.as_posix(), show_path(path))

    def path(self, name: os.PathLike | str) -> Path:
        """The file `name` inside the folder, refused if any part of the way to it
        below the folder (the file itself included) is a symbolic link."""
        rel = self.relative(name)
        current = self.root
        for part in rel.split("/"):
            current = current / part
            try:
                mode = os.lstat(current).st_mode
            except (FileNotFoundError, NotADirectoryError):
                break
            except OSError as exc:
                raise ImrsegError(f"{show_path(current)}: cannot read ({exc.strerror or one_line(exc)})") from None
            if stat.S_ISLNK(mode):
                raise ImrsegError(f"{show_path(current)}: is a symbolic link inside {param(self.parameter)}; "
                                  "imrseg does not follow links in folders it writes (remove the link)")
            if current != self.root / rel and not stat.S_ISDIR(mode):
                raise self._in_the_way(current, rel)
        return self.root / rel

    def _in_the_way(self, where: Path, rel: str) -> ImrsegError:
        return ImrsegError(f"{show_path(where)}: is in the way of {show_path(self.root / rel)} (imrseg needs a folder "
                           f"there); move or rename it, or choose another {param(self.parameter)}")

    @property
    def owned(self) -> frozenset[str]:
        """Every file known as imrseg's here, relative to the folder."""
        return frozenset(self._owned)

    def owns(self, name: os.PathLike | str) -> bool:
        return self.relative(name) in self._owned

    def check(self, names: Iterable[os.PathLike | str]) -> list[str]:
        """Refuse now what `claim` would refuse (a link on the way; a file there that
        imrseg did not write, unless `overwrite`), writing nothing; the names not yet
        known as imrseg's, relative and without repeats. Also refused: a name too long
        for the filesystem once imrseg's temporary-file name is made of it, and a name
        whose folder is one of the files named or owned here."""
        new = []
        rels = [self.relative(name) for name in names]
        files = self._owned.union(rels)
        for rel in rels:
            path, base = self.path(rel), rel.rpartition("/")[2]
            if base in (MANIFEST, LOCK_FILE) or is_temporary(base):
                raise ImrsegError(f"{show_path(path)}: a name imrseg keeps for itself; choose another name")
            length = len(os.fsencode(temporary_name(base)))
            if length > self._name_max:
                raise ImrsegError(f"{show_path(path)}: name too long for this filesystem ({length} bytes with the "
                                  f"temporary name imrseg writes it under, at most {self._name_max}); rename the "
                                  f"input, or choose another {param(self.parameter)}")
            parts = rel.split("/")
            way = next((prefix for prefix in ("/".join(parts[:i]) for i in range(1, len(parts))) if prefix in files),
                       None)
            if way is not None:
                raise self._in_the_way(self.root / way, rel)
            if rel not in self._owned:
                if os.path.lexists(path) and not self.overwrite:
                    how = (f"pass {param('overwrite')} to replace it, or " if self.overwrite is False else "")
                    raise ImrsegError(f"{show_path(path)}: exists and was not written by imrseg; {how}move it, "
                                      f"or choose another {param(self.parameter)}")
                if os.path.isdir(path):
                    raise ImrsegError(f"{show_path(path)}: is a folder; imrseg wants to write a file there")
                new.append(rel)
        return list(dict.fromkeys(new))

    def claim(self, names: Iterable[os.PathLike | str]) -> list[Path]:
        """Make `names` imrseg's, just before they are written: each one is refused as
        `check` says; the new ones are recorded in the manifest, with one write. Only
        for files about to be written (`write`, `log`, a batch of outputs): a claim is
        what lets imrseg replace the file later. Their paths, in order."""
        names = list(names)
        new = self.check(names)
        if new:
            with ResultsLog(self.path(MANIFEST)) as manifest:
                manifest.write_many([{"file": rel} for rel in new])
            self._owned.update(new)
        return [self.path(name) for name in names]

    def write(self, name: os.PathLike | str, data: bytes) -> Path:
        """Claim `name` and write `data` to it atomically."""
        [path] = self.claim([name])
        atomic_write_bytes(path, data)
        return path

    def log(self, name: os.PathLike | str) -> ResultsLog:
        """Claim `name` and open it as an append-only log."""
        [path] = self.claim([name])
        return ResultsLog(path)

    def read_bytes(self, name: os.PathLike | str) -> bytes:
        """A regular file inside the folder, never through a link (`durable.read_regular`)."""
        path = self.path(name)
        try:
            return read_regular(path)
        except FileNotFoundError as exc:
            raise InputError(f"{show_path(path)}: cannot read ({exc.strerror or one_line(exc)})") from None

    def is_file(self, name: os.PathLike | str) -> bool:
        """A regular file is there, reached through no link."""
        try:
            return stat.S_ISREG(os.lstat(self.path(name)).st_mode)
        except (OSError, ImrsegError):
            return False

    def clean(self, folders: Iterable[os.PathLike | str] = ("",)) -> int:
        """Remove the temporary files a killed writer left in `folders` (relative; "" is
        the folder itself). Safe only under the lock, which this folder holds."""
        return remove_temporaries(self.root if str(f) in ("", ".") else self.path(f) for f in folders)
