"""Idle time waiting for data (mmhpc.system.idle): the waits in next(), thesis Alg. 7/8, the
trainer's record."""
import time

import pytest

from mmhpc.config import ConfigError
from mmhpc.data.loading import build_datasets, build_loader
from mmhpc.system.idle import TimedBatches, epoch_idle, estimate_prefetch0_idle
from mmhpc.train import train

DELAY = 0.02


def _slow(n):
    for i in range(n):
        time.sleep(DELAY)  # loading a batch takes at least DELAY
        yield i


def test_timed_batches_splits_initialisation_from_the_waits():
    timed = TimedBatches(_slow(5))
    assert list(timed) == [0, 1, 2, 3, 4] and timed.batches == 5
    assert timed.first_s >= DELAY           # the first batch: initialisation
    assert timed.wait_s >= 4 * DELAY        # every later batch was waited for in full


def test_workload_is_not_idle_time():
    # Alg. 8: while the step works, nothing is waited for; wall = init + idle + work (+ loop
    # overhead)
    work = 0.03
    out = epoch_idle(_slow(4), workload=lambda b: time.sleep(work))
    assert out["batches"] == 4
    assert out["idle_s"] >= 3 * DELAY
    assert out["wall_s"] >= out["init_s"] + out["idle_s"] + 4 * work


def test_limit_stops_after_that_many_batches():
    assert epoch_idle(range(10), limit=3)["batches"] == 3


def test_prefetch0_estimate_needs_prefetch_one(tiny_config):
    cfg = tiny_config("cremad", "loader.num_workers=1", "loader.prefetch_factor=2")
    loader = build_loader(build_datasets(cfg)["train"], cfg, True, preinit=False)
    with pytest.raises(ValueError, match="prefetch factor 1"):
        estimate_prefetch0_idle(loader, 0)


def test_prefetch0_runs_with_one_and_is_estimated(tiny_config):
    cfg = tiny_config("cremad", "loader.num_workers=1", "loader.prefetch_factor=0")
    loader = build_loader(build_datasets(cfg)["train"], cfg, True, preinit=False)
    assert loader.loader.prefetch_factor == 1  # PyTorch refuses 0 with workers
    idle = estimate_prefetch0_idle(loader, 0, limit=3)
    assert idle > 0
    with pytest.raises(ConfigError, match="loader.prefetch_factor"):
        tiny_config("cremad", "loader.num_workers=1", "loader.prefetch_factor=-1")


@pytest.mark.slow
def test_trainer_records_the_data_wait_per_epoch(tiny_config):
    measured = train(tiny_config("cremad", "train.epochs=2"), progress=False)
    estimated = train(tiny_config("cremad", "loader.num_workers=1", "loader.prefetch_factor=0",
                                  "output.name=p0"), progress=False)
    for rec, flag in ((measured, False), (estimated, True)):
        for e in rec.epochs:
            t = e.time
            assert t.train_data_wait_estimated is flag
            assert 0 <= t.train_data_wait_s and 0 <= t.val_data_wait_s <= t.val_s
            if not flag:  # waited inside the training pass
                assert t.train_data_wait_s <= t.train_s
    # a run's sample count is untouched by the estimate's own pass
    assert estimated.epochs[0].time.train_samples == measured.epochs[0].time.train_samples
