"""Work on many small objects at once (a 10,000-run sweep's configs, manifest and job entries).

Python's cyclic garbage collector runs every few hundred new objects and scans those still alive, so
building or reading a big sweep spends about a third of its CPU time in it (benchmarks/
cli_scale.py) on objects that hold no reference cycles and all stay alive. `gc_paused` holds it for
such a block (a decorator or a `with`); the objects are collected as usual once it ends. Standard
library only."""
from __future__ import annotations

import contextlib
import gc


@contextlib.contextmanager
def gc_paused():
    """No cyclic collection inside the block; it resumes after, unless it was off before."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
