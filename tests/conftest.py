"""Shared fixtures: synthetic datasets are generated once per session into a temporary directory."""
from __future__ import annotations

import pytest

from mmhpc.config import load_config
from mmhpc.data.synthetic import ensure_synthetic


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """`synth_dir(name)` -> directory of the tiny synthetic dataset `name` (made once per session)."""
    base = tmp_path_factory.mktemp("synthetic")
    made = {}

    def get(name: str):
        if name not in made:
            made[name] = ensure_synthetic(name, "tiny", 0, root=base / name, progress=False)
        return made[name]

    return get


@pytest.fixture
def tiny_config(synth_dir, tmp_path):
    """`tiny_config(dataset, **overrides)` -> a validated RunConfig for a short CPU run."""

    def make(dataset: str = "cremad", *overrides: str, **kw):
        base = [f"data.dataset={dataset}", f"data.root={synth_dir(dataset)}", f"output.runs_dir={tmp_path / 'runs'}",
                "train.epochs=1", "train.max_batches=2", "train.batch_size=16", "system.threads=2"]
        return load_config(None, base + list(overrides) + [f"{k}={v}" for k, v in kw.items()])

    return make
