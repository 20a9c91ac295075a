"""Append-only JSON-lines progress files (``*.partial.jsonl``): what collection and search evaluation
resume from after a kill.

Both append one JSON line per finished unit of work and flush it, so a kill leaves whole lines and at
most one cut line, the last, which is skipped (its unit is redone) and dropped before the next append.
Any other line that is not JSON is damage, and an error.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from oreo.checkpoint import CheckpointError


def _tail_start(f, size: int) -> int:
    """The offset just after the last newline of the open binary file ``f`` (0 if none)."""
    pos = size
    while pos > 0:
        n = min(1 << 16, pos)
        pos -= n
        f.seek(pos)
        i = f.read(n).rfind(b"\n")
        if i >= 0:
            return pos + i + 1
    return 0


def parses_json(data: str | bytes) -> bool:
    try:
        json.loads(data)
        return True
    except ValueError:
        return False


@contextmanager
def append_lines(path: Path):
    """``path`` opened for appending JSON lines. A last line cut by a kill (no newline) is dropped
    first (its unit of work is redone), or ended if it is whole JSON, so the file holds only whole
    lines before the next one is appended."""
    path = Path(path)
    if path.exists() and path.stat().st_size:
        with path.open("rb+") as f:
            size = f.seek(0, 2)
            start = _tail_start(f, size)
            if start < size:
                f.seek(start)
                if parses_json(f.read()):
                    f.write(b"\n")
                else:
                    f.truncate(start)
    with path.open("a") as out:
        yield out


def whole_lines(path: Path) -> list:
    """The JSON objects of ``path``'s lines; ``[]`` if there is no file. A last line without its
    newline that is not JSON was cut by a kill and is skipped; any other line that is not JSON is
    damage: ``CheckpointError`` naming the file and the line."""
    path = Path(path)
    if not path.exists():
        return []
    *lines, tail = path.read_bytes().split(b"\n")
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except ValueError as e:
            raise CheckpointError(
                path, f"damaged: not JSON ({e}); only the last line can be cut by a kill",
                "delete that line to redo only its work, or delete the file to redo all of its work",
                line=number) from e
    if tail.strip():
        try:
            items.append(json.loads(tail))
        except ValueError:
            pass  # cut by a kill: its unit of work is redone
    return items

