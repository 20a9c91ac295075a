"""Write a file whole or not at all: its new content goes to a temporary beside it, which is then renamed
over it, so a reader, or a rerun after a kill, finds the old file or the new one, never half of one.
(Folders are saved that way by ``oreo.checkpoint.save_atomically``.)
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_file(path: str | Path, tmp: str | Path | None = None):
    """A temporary path (``tmp``, by default ``NAME.tmp`` beside ``path``) for the block to write ``path``'s
    new content to; renamed over ``path`` when the block ends, removed if it fails."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp") if tmp is None else Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomically(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` (text is written as UTF-8) to ``path`` through a temporary renamed over it: a kill
    never leaves half a file."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
