"""Files written whole or not at all: a reader (another rank, a resumed run, a user's tail) never sees half of one.

Every file hyperscale replaces in place (checkpoint pointers, exports' records, results, plots, caches, job scripts)
is written to a temporary sibling unique to this process, given its mode, then renamed over the target
(``os.replace``, atomic on one filesystem); a failed write leaves the target as it was and no temporary behind.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


def replace_with(path: PathLike, write: Callable[[Path], object], mode: Optional[int] = None) -> Path:
    """Call ``write(tmp)`` to produce the file at a temporary sibling of ``path``, set ``mode`` where given (some
    writers create files 0600 whatever the umask), then move it over ``path``. Returns ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text_atomic(path: PathLike, text: str, mode: Optional[int] = None) -> Path:
    """``text`` at ``path``, whole or not at all."""
    return replace_with(path, lambda tmp: tmp.write_text(text), mode)
