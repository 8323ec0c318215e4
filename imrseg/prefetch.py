"""Work started ahead of its use: while the caller handles item i, items i + 1 to
i + lookahead are being prepared (decoded on a thread pool, typically), and a
handed-over item's result is dropped at once, so at most lookahead + 1 are held."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

Item = TypeVar("Item")
Handle = TypeVar("Handle")


def ahead(items: Sequence[Item], start: Callable[[Item], Handle], lookahead: int) -> Iterator[tuple[Item, Handle]]:
    """(item, start(item)) for each item in order, `start` called `lookahead` items ahead
    of the one handed over (`start` returns a handle, such as a future, not the result)."""
    pending = [start(item) for item in items[:lookahead]]
    for i, item in enumerate(items):
        if i + lookahead < len(items):
            pending.append(start(items[i + lookahead]))
        handle, pending[i] = pending[i], None
        yield item, handle
