"""Data loading: uint8 frames made model input on the device, the worker start method, late
pre-initialisation."""
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import psutil
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from mmhpc.compat import read_jpeg
from mmhpc.data import loading
from mmhpc.data.dataset import PreparedDataset
from mmhpc.data.frames import CROP_KEY, finish_batch
from mmhpc.data.loading import build_datasets, build_loader, worker_context


def _reference(frame: torch.Tensor, top, left, h, w, flip) -> torch.Tensor:
    """torchvision's own crop + resize (bilinear) + flip + ImageNet normalisation of one uint8
    frame."""
    size = list(frame.shape[-2:])
    x = TF.resized_crop(frame.float(), top, left, h, w, size, antialias=False)
    if flip:
        x = TF.horizontal_flip(x)
    return TF.normalize(x / 255, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def test_finish_batch_crops_flips_and_normalises_each_frame_as_torchvision_does():
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (2, 3, 3, 40, 40), dtype=torch.uint8, generator=g)
    params = [
        (0, 0, 40, 40, 0),
        (5, 7, 20, 30, 1),
        (10, 2, 13, 9, 0),
        (0, 20, 40, 20, 1),
        (33, 30, 7, 10, 1),
        (1, 1, 38, 25, 0),
    ]
    crop = torch.tensor(params, dtype=torch.float32).view(2, 3, 5)
    out = finish_batch({"visual": frames, CROP_KEY: crop, "label": torch.tensor([1, 2])})
    assert CROP_KEY not in out and torch.equal(out["label"], torch.tensor([1, 2]))
    assert out["visual"].dtype == torch.float32 and out["visual"].shape == frames.shape
    for k, p in enumerate(params):
        b, t = divmod(k, 3)
        torch.testing.assert_close(
            out["visual"][b, t], _reference(frames[b, t], *p), atol=2e-4, rtol=0
        )


def test_an_evaluation_batch_is_only_normalised():
    frames = torch.randint(0, 256, (2, 3, 3, 16, 16), dtype=torch.uint8)
    out = finish_batch({"visual": frames})
    ref = TF.normalize(
        frames.flatten(0, 1).float() / 255, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    )
    torch.testing.assert_close(out["visual"], ref.view(frames.shape))
    assert finish_batch(out) is out  # float frames are model input already


def test_workers_send_uint8_frames_and_each_training_frame_its_own_crop(synth_dir):
    root = synth_dir("cremad")
    train, val = PreparedDataset(root, "train", train=True), PreparedDataset(root, "val")
    item = train[0]
    assert item["visual"].dtype == torch.uint8 and item["visual"].shape == (3, 3, 16, 16)
    crops = item[CROP_KEY]
    assert (
        crops.shape == (3, 5) and len({tuple(c.tolist()) for c in crops}) == 3
    )  # one crop per frame
    assert (
        (crops[:, 2] >= 1) & (crops[:, 0] + crops[:, 2] <= 16) & (crops[:, 1] + crops[:, 3] <= 16)
    ).all()
    assert CROP_KEY not in val[0]
    assert torch.equal(
        val[0]["visual"], val[0]["visual"]
    )  # evaluation frames are the stored frames


@pytest.mark.parametrize("workers", [0, 2])
def test_the_loader_uses_no_deprecated_torch_or_torchvision_api(tiny_config, workers):
    """torchvision 0.29 deprecated its image decoding (for TorchCodec's): every DeprecationWarning
    of torch or torchvision on the loader's path is an error here, in the workers too (forked: same
    filters)."""
    cfg = tiny_config("cremad", f"loader.num_workers={workers}", "loader.preinit=false",
                      "loader.start_method=fork")
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "error", category=DeprecationWarning, module=r"torch(vision|codec)?(\.|$)"
        )
        datasets = build_datasets(cfg)
        for split in ("train", "val"):
            batches = list(build_loader(datasets[split], cfg, split == "train").epoch(0))
            assert sum(len(b["label"]) for b in batches) == len(datasets[split])
            assert finish_batch(batches[0])["visual"].dtype == torch.float32


def test_frames_decode_to_the_pixels_torchvision_decoded(synth_dir):
    root = synth_dir("cremad")
    path = next((root / "visual").glob("*/0.jpg"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg, read_file

        old = decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB)
    assert torch.equal(read_jpeg(path), old)


def test_the_standard_loader_forks_and_only_the_preinitialised_one_uses_a_forkserver():
    assert worker_context("auto", preinit=False).get_start_method() == "fork"
    assert worker_context("auto", preinit=True).get_start_method() == "forkserver"
    assert worker_context("spawn", preinit=False).get_start_method() == "spawn"


# a main that notes each import: in the parent as __main__, elsewhere as __mp_main__ (a process
# re-running it)
_COUNTING_MAIN = """
import os
with open(os.environ["IMPORTS_LOG"], "a") as f:
    f.write(f"{os.getpid()} {__name__}\\n")
if __name__ == "__main__":
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from mmhpc.data.loading import worker_context
    loader = DataLoader(TensorDataset(torch.arange(8)), batch_size=2, num_workers=2,
                        multiprocessing_context=worker_context("auto", preinit=True))
    for epoch in range(2):  # four workers in all
        assert sum(len(b[0]) for b in loader) == 8
"""


@pytest.mark.parametrize("how", ["script", pytest.param("module", marks=pytest.mark.slow)])
def test_forkserver_workers_do_not_import_the_main_module_again(tmp_path, how):
    """CPython <= 3.13.7 re-ran the parent's main in every forkserver child (its preload of __main__
    was broken); worker_context hands the main to the server, which imports it once for all
    workers."""
    (tmp_path / "counting_main.py").write_text(_COUNTING_MAIN)
    log = tmp_path / "imports.log"
    cmd = (
        [sys.executable, "counting_main.py"]
        if how == "script"
        else [sys.executable, "-m", "counting_main"]
    )
    env = {**os.environ, "IMPORTS_LOG": str(log), "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run(cmd, cwd=tmp_path, env=env, check=True, timeout=300)
    lines = [line.split() for line in log.read_text().splitlines()]
    assert [name for _, name in lines] == ["__main__", "__mp_main__"], (
        lines
    )  # the parent, the server
    assert lines[0][0] != lines[1][0]


def test_only_a_direct_child_of_the_process_that_wrote_the_hand_over_acts_on_it(
    tmp_path, monkeypatch
):
    script = tmp_path / "other_main.py"
    script.write_text("raise SystemExit('imported')\n")
    monkeypatch.setenv(
        loading.FORKSERVER_ENV, json.dumps({"parent": 1, "init_main_from_path": str(script)})
    )
    loading.prepare_forkserver_main()  # not the server of pid 1: nothing imported
    assert loading.FORKSERVER_ENV not in os.environ


_SIGNALLED_MAIN = """
import os, signal, sys
if __name__ == "__main__":
    import psutil, torch
    from torch.utils.data import DataLoader, TensorDataset
    from mmhpc.data.loading import EpochLoader, PreinitLoader, worker_context
    how, method = sys.argv[1], sys.argv[2]
    loader = DataLoader(TensorDataset(torch.arange(64)), batch_size=2, num_workers=2,
                        multiprocessing_context=worker_context(method, preinit=how == "preinit"))
    loader = PreinitLoader(loader) if how == "preinit" else EpochLoader(loader)
    seen = 0
    for epoch in range(2):
        for i, (batch,) in enumerate(loader.epoch(epoch)):
            seen += len(batch)
            # what SLURM's --signal=USR2@<s> does: every process of the step gets it
            if epoch == 0 and i == 20:
                for p in psutil.Process().children(recursive=True):
                    os.kill(p.pid, signal.SIGUSR2)
    loader.close()
    assert seen == 128, seen
    print("all batches")
"""


@pytest.mark.parametrize(
    "how,method", [("preinit", "auto"), pytest.param("standard", "spawn", marks=pytest.mark.slow)]
)
def test_in_a_slurm_job_the_signal_kills_no_loader_process(tmp_path, how, method):
    """SLURM's pre-timeout signal reaches every process of the job step (proctrack/linuxproc and
    cgroup alike). A forkserver, its workers, spawned workers and multiprocessing's resource tracker
    start from a fresh interpreter, where the signal kills by default: the epoch failed with
    'DataLoader worker exited unexpectedly' instead of stopping at a step and requeueing. They start
    with it blocked."""
    (tmp_path / "signalled_main.py").write_text(_SIGNALLED_MAIN)
    env = {**os.environ, "SLURM_JOB_ID": "9", "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "signalled_main.py", how, method], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "all batches", out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[
        -2000:
    ]  # nor a resource tracker that died and came back


def _workers():
    me = psutil.Process()
    servers = {
        p.pid
        for p in me.children()
        if any(
            k in " ".join(p.cmdline())
            for k in ("forkserver import main", "resource_tracker import main")
        )
    }
    return [p for p in me.children(recursive=True)
            if p.pid not in servers and p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.slow
def test_the_next_epoch_starts_near_the_end_of_the_current_one(tiny_config):
    """Not at the epoch's start (two sets of workers competing all epoch), but before it ends."""
    cfg = tiny_config(
        "cremad", "loader.num_workers=2", "loader.preinit=true", "train.batch_size=48"
    )
    loader = build_loader(build_datasets(cfg)["train"], cfg, True)
    try:
        total = len(loader)
        started_at = {}
        for epoch in range(2):
            for done, _ in enumerate(loader.epoch(epoch), start=1):
                time.sleep(0.3)  # a training step longer than the start-up of 2 forked workers
                if done == 1 and epoch > 0:
                    assert len(_workers()) == 2, "the next epoch's workers started with this epoch"
                if epoch not in started_at and loader._pending is not None:
                    started_at[epoch] = done
        # epoch 0's start-up includes booting the forkserver; later ones show the steady state
        # started in the second half, at the latest while the last batch is worked on
        assert total // 2 < started_at[1] <= total, (started_at, total)
        assert loader._pending is not None and loader._pending[0] == 2
    finally:
        loader.close()
    assert _workers() == []


def test_a_slow_start_up_is_started_early_enough_to_hide_it(tiny_config, monkeypatch):
    """With a start-up as long as the whole epoch, the next epoch starts right after the first
    batch."""
    monkeypatch.setattr(loading, "START_LEAD", 1e6)
    cfg = tiny_config(
        "cremad", "loader.num_workers=2", "loader.preinit=true", "train.batch_size=32"
    )
    loader = build_loader(build_datasets(cfg)["train"], cfg, True)
    try:
        it = iter(loader.epoch(0))
        next(it)
        next(it)  # the request after the first step
        assert loader._pending is not None and loader._pending[0] == 1
    finally:
        loader.close()


def test_a_temporary_directory_too_long_for_a_socket_is_refused_before_any_record(
    tiny_config, monkeypatch
):
    """Loader workers hand tensors back through a Unix socket under TMPDIR; a path over 107 bytes
    fails inside a worker's feeder thread, unreported, and the loader waited forever (seen in a
    gpu-check run whose TMPDIR was a test directory under a long clone path)."""
    import tempfile

    from mmhpc.config import ConfigError
    from mmhpc.data.loading import SOCKET_PATH_MAX, SOCKET_SUFFIX, check_socket_dir
    from mmhpc.train import train

    fits = "/" + "t" * (SOCKET_PATH_MAX - SOCKET_SUFFIX - 1)  # never created: refused before
    monkeypatch.setattr(tempfile, "tempdir", fits)
    check_socket_dir(2)  # at the limit: accepted
    long = fits + "t"
    monkeypatch.setattr(tempfile, "tempdir", long)
    cfg = tiny_config("cremad", "loader.num_workers=2")
    with pytest.raises(ConfigError) as err:
        train(cfg, progress=False)
    assert str(err.value).startswith(f"TMPDIR: {long}: loader.num_workers=2 pass tensors")
    assert str(err.value).endswith("valid: a TMPDIR of at most 75 bytes (e.g. /tmp), "
                                   "loader.num_workers=0")
    assert not Path(cfg.output.runs_dir).exists()  # bad input: nothing written
    train(tiny_config("cremad", "loader.num_workers=0"), progress=False)  # no workers: no socket
