"""Progress bars for long loops: live on a terminal, a line every 30 s in logs (CI, nohup, files)."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress(**kwargs) -> tqdm:
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", 30.0)
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(**kwargs)
