"""Reading pickles that must hold plain data only.

A pickle can name any importable callable and have it called while loading, so
a split file from the internet or a shared folder could run code. Plain
containers (dicts, lists, tuples, ints, floats, strings, bytes) need no global
at all, so refusing every global loses nothing the split files use.
"""
from __future__ import annotations

import io
import pickle

from ..errors import InputError


class _Refused(pickle.UnpicklingError):
    pass


class _NoGlobals(pickle.Unpickler):
    """An unpickler for which no class or function exists."""

    def find_class(self, module, name):
        # GLOBAL, STACK_GLOBAL, INST and the copyreg EXT opcodes all come through here.
        raise _Refused(f"refused global {module}.{name}")

    def persistent_load(self, pid):
        raise _Refused("refused persistent id")


def safe_loads(data: bytes, origin: str) -> object:
    """Unpickle `data`, refusing every global; InputError naming `origin` otherwise."""
    try:
        return _NoGlobals(io.BytesIO(data)).load()
    except _Refused as exc:
        raise InputError(f"{origin}: refused to load: the pickle is not plain data ({exc})") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            MemoryError, RecursionError, OverflowError) as exc:
        # Malformed streams raise any of these from the C unpickler.
        raise InputError(f"{origin}: not a readable pickle ({type(exc).__name__}: {exc})") from None
