"""The one atomic writer (mmhpc.atomic.atomic_write) and its failure behaviour."""
from __future__ import annotations

import pytest


@pytest.mark.parametrize("how", ["text", "bytes", "callback"])
def test_atomic_write_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path, how):
    from mmhpc.atomic import atomic_write, atomic_write_bytes, atomic_write_text

    path = tmp_path / "out.json"
    path.write_text("old")

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises((OSError, TypeError)):
        if how == "text":
            atomic_write_text(path, object())  # not text: the write fails
        elif how == "bytes":
            atomic_write_bytes(path, "not bytes")
        else:
            atomic_write(path, half_then_fail)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    atomic_write(path, lambda tmp: tmp.write_bytes(b"new"))
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]

