"""A call's arguments checked the same way from Python and from the command line:
a value of the wrong type is a TypeError, a value out of range an InputError, each
naming the parameter as `errors.param` does (the command line shows its flag).

`check_fields` checks a settings dataclass's fields against their annotations, so the
library's settings objects refuse what the command line's option types would."""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Sequence
from pathlib import Path

from .errors import InputError, param


def type_error(name: str, value, expected: str) -> TypeError:
    return TypeError(f"{param(name)} must be {expected}, not {type(value).__name__}")


def check_count(name: str, value, minimum: int = 1) -> int:
    """`value`, a whole number of at least `minimum` (a bool is no number here)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise type_error(name, value, "an int")
    if value < minimum:
        raise InputError(f"{param(name)} must be {minimum} or more, not {value}")
    return value


def check_text(name: str, value) -> str:
    if not isinstance(value, str):
        raise type_error(name, value, "a str")
    return value


def check_sequence(name: str, value) -> list:
    """`value` as a list: a list or tuple, not a string (whose letters would be its items)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise type_error(name, value, "a list or tuple")
    return list(value)


def _matches(value, hint) -> tuple[bool, object]:
    """(whether `value` fits the annotation `hint`, the value as the field keeps it): a
    path may be given as a str, a tuple as a list."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            fits, kept = _matches(value, option)
            if fits:
                return True, kept
        return False, value
    if hint is type(None):
        return value is None, value
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
            return False, value
        item = typing.get_args(hint)[0]
        kept = [_matches(v, item) for v in value]
        return all(fits for fits, _ in kept), tuple(v for _, v in kept)
    if hint is Path:
        if isinstance(value, (str, os.PathLike)):
            return True, Path(value)
        return False, value
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    return isinstance(value, hint), value


def _describe(hint) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(hint))
    if hint is type(None):
        return "None"
    if typing.get_origin(hint) is tuple:
        return f"a list or tuple of {_describe(typing.get_args(hint)[0])}"
    if hint is Path:
        return "a path"
    return f"{'an' if hint.__name__[0] in 'aeiouAEIOU' else 'a'} {hint.__name__}"


def check_fields(settings) -> None:
    """TypeError naming the first field of the dataclass `settings` whose value does not fit
    its annotation; paths given as str and tuples as lists are kept as the annotation says."""
    hints = typing.get_type_hints(type(settings))
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        fits, kept = _matches(value, hints[field.name])
        if not fits:
            raise type_error(field.name, value, _describe(hints[field.name]))
        if kept is not value:
            object.__setattr__(settings, field.name, kept)
