"""The project's one atomic writer. Standard library only: mmhpc.gpucheck runs it on a bare
Python, and mmhpc.results, the data preparation, the sampler and the checkpoints all use it."""
from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "is_temporary"]


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` atomically (see `atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` atomically (see `atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def is_temporary(name: str) -> bool:
    """Whether a file name is one of `atomic_write`'s temporary files (left by a killed writer)."""
    return name.startswith(".") and name.endswith(".tmp")


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """The project's one atomic writer: `write(tmp)` fills a temporary file beside `path` (text,
    bytes, `torch.save`, ...), which is then synced and renamed over `path`, so readers see the old
    file or the new one, never a partial one; a failing `write` leaves the old file as it was and no
    temporary file behind. The file's permissions follow the umask (mode 0666 & ~umask, as for any
    new file; so a group-readable umask shares records, manifests and series with the project's
    group), and the temporary name is unique per host, process and call, so two writers never share
    one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(
        f".{path.name}.{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}.tmp"
    )
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
