"""Errors a user can act on. The CLI prints their message as one line, no traceback;
`show_path` and `one_line` keep paths and library messages to that one line.

A message names the parameter at fault as the library calls it, in backquotes
(`param("max_pixels")` gives "`max_pixels`"), so a library user reads the name they
passed; the command line prints the same message with its flag there instead
(`in_terms_of`: "--max-pixels")."""
from __future__ import annotations

import os
import re
from collections.abc import Mapping


class ImrsegError(Exception):
    """Base class: the message names the file or argument and the problem."""


class CheckpointError(ImrsegError):
    """A weight file that cannot be read, is unsafe, or belongs to another model."""


class InputError(ImrsegError):
    """An image or argument that cannot be used."""


class NetworkError(ImrsegError):
    """A download that failed: the Hub or a server out of reach, or its answer unusable.
    Its own exit status, since the arguments may be fine and a retry later may work."""


def show_path(path: os.PathLike | str) -> str:
    """The path as one printable line: control characters and undecodable bytes escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(path))


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (Pillow's and the Hub client's may span several)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class Note(UserWarning):
    """Something a user should know once (not an error): the CLI prints it as one line."""


PARAMETER = re.compile(r"`([a-z][a-z0-9_]*)`")


def param(name: str) -> str:
    """How a message names the library's parameter `name`."""
    return f"`{name}`"


def in_terms_of(message: str, names: Mapping[str, str]) -> str:
    """`message` with each parameter it names that `names` knows written as names[parameter]
    (a command's flag); anything else in backquotes stays as it is."""
    return PARAMETER.sub(lambda m: names.get(m[1], m[0]), message)
