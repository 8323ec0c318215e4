"""Reading pickles that must hold plain data only.

A pickle can name any importable callable and have it called while loading, so
a split file from the internet or a shared folder could run code. It can also
make a small file expensive: a list stored once and referenced from every key
(a memo get) is one object to the unpickler but a full copy to everything that
walks the result, so a 2 MB file can stand for gigabytes of names.

So only the opcodes of plain containers (dicts, lists, tuples, ints, floats,
strings, bytes, None, booleans) are run, a memo get may fetch a string or number
(the official COCO lists share their repeated image names) but never a
container, and a file of more than MAX_OPS opcodes is refused: the official
lists have at most about 210 000, and reading stays well under a second.
"""
from __future__ import annotations

import io
import pickle
import pickletools
import struct

from ..errors import InputError

MAX_OPS = 500_000

_PLAIN_OPS = frozenset({
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK",
    "NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4",
    "FLOAT", "BINFLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE",
    "SHORT_BINUNICODE", "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
    "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS", "EMPTY_LIST", "LIST", "APPEND", "APPENDS",
    "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
    "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE",
    # These only name a global; find_class refuses it, naming it in the message.
    "GLOBAL", "STACK_GLOBAL",
})
_MEMO_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_CONTAINERS = (list, dict, tuple, set, frozenset, bytearray)


class _Refused(pickle.UnpicklingError):
    pass


def _counted(load_op):
    def run(unpickler):
        unpickler.ops += 1
        if unpickler.ops > MAX_OPS:
            raise _Refused(f"more than {MAX_OPS} pickle operations, far more than a split list has")
        load_op(unpickler)
    return run


def _memo_get(load_op):
    def run(unpickler):
        load_op(unpickler)
        if isinstance(unpickler.stack[-1], _CONTAINERS):
            shared = type(unpickler.stack[-1]).__name__
            raise _Refused(f"a {shared} referenced twice; shared references are refused")
    return _counted(run)


def _refuse(name: str):
    def run(_unpickler):
        raise _Refused(f"refused opcode {name}")
    return run


class _Dispatch(dict):
    """Opcode byte -> handler; any opcode not listed (object building, extension codes,
    DUP, sets, buffers) is refused, naming it."""

    def __missing__(self, code: int):
        op = next((o for o in pickletools.opcodes if o.code.encode("latin-1")[0] == code), None)
        return _refuse(op.name if op else f"byte 0x{code:02x}")


def _dispatch() -> _Dispatch:
    names = {op.code.encode("latin-1")[0]: op.name for op in pickletools.opcodes}
    table = _Dispatch()
    for code, load_op in pickle._Unpickler.dispatch.items():
        if names.get(code) in _PLAIN_OPS:
            table[code] = _counted(load_op)
        elif names.get(code) in _MEMO_GETS:
            table[code] = _memo_get(load_op)
    return table


class _PlainData(pickle._Unpickler):
    """The pure-Python unpickler, whose opcodes can be checked one by one, limited to
    plain data; no class or function exists for it."""

    dispatch = _dispatch()

    def __init__(self, file):
        super().__init__(file)
        self.ops = 0

    def find_class(self, module, name):
        raise _Refused(f"refused global {module}.{name}")


def safe_loads(data: bytes, origin: str) -> object:
    """Unpickle `data`, plain data only; InputError naming `origin` otherwise."""
    try:
        return _PlainData(io.BytesIO(data)).load()
    except _Refused as exc:
        raise InputError(f"{origin}: refused to load: the pickle is not plain data ({exc})") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            MemoryError, RecursionError, OverflowError, struct.error) as exc:
        # Malformed streams raise any of these.
        raise InputError(f"{origin}: not a readable pickle ({type(exc).__name__}: {exc})") from None
