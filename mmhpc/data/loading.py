"""From a RunConfig to datasets and per-epoch loaders: standard, or pre-initialised (thesis Alg. 6).

Training order is a pure function of (seed, epoch, rank, world size): a `DistributedSampler` with
`set_epoch` shards the same permutation for one process or many, so a resumed, a DDP and a
pre-initialised run all see the batches a plain single run sees.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing import process, spawn
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mmhpc.data.augment import audio_augment
from mmhpc.data.dataset import PreparedDataset
from mmhpc.data.synthetic import ensure_synthetic
from mmhpc.errors import ConfigError, problem
from mmhpc.preempt import deaf_children


def dataset_root(cfg) -> Path:
    d = cfg.data
    if d.source == "prepared":
        return Path(d.root)
    return ensure_synthetic(d.dataset, d.preset, d.data_seed, root=d.root)


def build_datasets(cfg) -> dict[str, PreparedDataset]:
    root = dataset_root(cfg)
    augment = None
    if cfg.model.audio_augment and "audio" in cfg.modalities:
        augment = audio_augment
    return {split: PreparedDataset(root, split, cfg.modalities, train=(split == "train"),
                                   verify=cfg.data.verify if split == "train" else "none",
                                   audio_augment=augment)
            for split in ("train", "val", "test")}


def build_loader(dataset: Dataset, cfg, train: bool, rank: int = 0, world: int = 1,
                 preinit: bool | None = None, device: torch.device | None = None) -> EpochLoader:
    """The run's loader knobs on a DataLoader; the global batch is split evenly over `world`
    processes. `device`: the run's device, made current in the pre-initialisation thread (its
    pin-memory thread would otherwise open a context on GPU 0 in every DDP process)."""
    lc = cfg.loader
    if lc.num_workers > 0:
        check_socket_dir(lc.num_workers)
    sampler = (
        DistributedSampler(
            dataset,
            num_replicas=world,
            rank=rank,
            shuffle=train,
            seed=cfg.train.seed,
            drop_last=False,
        )
        if train
        else None
    )
    preinit = lc.preinit if preinit is None else preinit
    kwargs = {}
    if lc.num_workers > 0:
        # prefetch 0 (no prefetching) is refused by PyTorch: 1, and the trainer estimates the idle
        # time
        kwargs.update(
            persistent_workers=lc.persistent_workers,
            prefetch_factor=1 if lc.prefetch_factor == 0 else lc.prefetch_factor,
            multiprocessing_context=worker_context(lc.start_method, preinit),
        )
    loader = DataLoader(
        dataset,
        batch_size=cfg.train.batch_size // world,
        sampler=sampler,
        num_workers=lc.num_workers,
        pin_memory=lc.pin_memory,
        generator=torch.Generator().manual_seed(cfg.train.seed + rank),
        **kwargs,
    )
    return PreinitLoader(loader, device) if preinit else EpochLoader(loader)


#: the longest Unix socket path (Linux: `sun_path` is 108 bytes with its NUL); and what
#: multiprocessing adds to the temporary directory for one (`pymp-XXXXXXXX/listener-XXXXXXXX`)
SOCKET_PATH_MAX, SOCKET_SUFFIX = 107, len("/pymp-12345678/listener-12345678")


def check_socket_dir(workers: int) -> None:
    """Refuse, before any work, a temporary directory too long for the Unix sockets loader workers
    use (workers hand tensors back through one, a forkserver listens on one). With a longer TMPDIR
    the socket's bind fails inside a worker's feeder thread, which nothing reports: the loader then
    waits for its batch forever."""
    tmp = tempfile.gettempdir()
    length = len(os.fsencode(tmp)) + SOCKET_SUFFIX
    if length > SOCKET_PATH_MAX:
        raise ConfigError(problem(
            "TMPDIR",
            f"{tmp}: loader.num_workers={workers} pass tensors through Unix sockets under it, "
            f"whose paths would be {length} bytes, over the {SOCKET_PATH_MAX} a socket path may "
            "have",
            [f"a TMPDIR of at most {SOCKET_PATH_MAX - SOCKET_SUFFIX} bytes (e.g. /tmp)",
             "loader.num_workers=0"],
        ))


def worker_context(method: str, preinit: bool):
    """How DataLoader workers start.

    `auto` forks the standard loader's workers (cheapest), also after CUDA is initialised: its
    workers only read and decode files and never touch CUDA (frames become model input on the
    device, in the main process), which is what makes a fork after CUDA safe. A pre-initialised
    loader starts its workers from a helper thread, and a child forked from a multi-threaded process
    can inherit locks held by other threads (workers died or hung here when forked while the main
    thread trained); a forkserver forks them from a clean single-threaded process instead, with the
    parent's main module, torch and the dataset module preloaded there, so a worker starts about as
    fast as a forked one.
    """
    if method == "auto":
        method = "forkserver" if preinit else "fork"
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        # read when the server starts (with the first forkserver worker of the process)
        os.environ[FORKSERVER_ENV] = json.dumps({"parent": os.getpid(), **{
            k: v for k, v in spawn.get_preparation_data("mmhpc").items() if k in _MAIN_KEYS}})
        ctx.set_forkserver_preload(["mmhpc.data.forkserver", "torch", "mmhpc.data.dataset"])
    return ctx


# CPython's forkserver is meant to import the parent's `__main__` once and fork every child from
# that state, but up to 3.13.7 the hand-over was broken (python/cpython#98552, #126631, #137996: the
# server looks for a `main_path` key that spawn.get_preparation_data renamed `init_main_from_path`
# in 2013), so every worker re-ran the main script or module first: for `mmhpc`, a benchmark script
# or pytest about 0.6 s of imports per worker, paid each epoch by a pre-initialised loader,
# competing with the training step for the cores. worker_context hands sys.path and the main over in
# FORKSERVER_ENV; the server's first preload, mmhpc.data.forkserver, applies them. On a fixed
# CPython the main is in place already and nothing happens.
FORKSERVER_ENV = "MMHPC_FORKSERVER_MAIN"
_MAIN_KEYS = ("sys_path", "init_main_from_name", "init_main_from_path")


def prepare_forkserver_main() -> None:
    """In the forkserver: import the parent's main as each child would (once, here). Only in a
    direct child of the process that wrote FORKSERVER_ENV; a main that fails here is left to the
    workers, which report it."""
    data = json.loads(os.environ.pop(FORKSERVER_ENV, "") or "{}")
    if data.pop("parent", None) != os.getppid():
        return
    current = process.current_process()
    current._inheriting = (
        True  # as CPython's fix: a main starting processes at import fails, not recurses
    )
    try:
        spawn.prepare(data)
    except Exception:  # noqa: BLE001
        pass
    finally:
        del current._inheriting


class EpochLoader:
    """The standard loader: each epoch creates a fresh iterator (and, without persistent workers,
    workers)."""

    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def generator(self) -> torch.Generator:
        return self.loader.generator

    def _set_epoch(self, epoch: int) -> None:
        if isinstance(self.loader.sampler, DistributedSampler):
            self.loader.sampler.set_epoch(epoch)

    def epoch(self, epoch: int) -> Iterator:
        self._set_epoch(epoch)
        with deaf_children():
            return iter(self.loader)

    def close(self) -> None:
        pass


class _Started:
    """An iterator whose first batch has been fetched already, and how long that took (the
    start-up)."""

    def __init__(self, it, first, seconds: float):
        self.it, self.first, self.seconds = it, first, seconds

    def __iter__(self):
        if self.first is not _END:
            yield self.first
            self.first = None
            yield from self.it


_END = object()

# Start the next epoch when the current one has about this many start-ups' worth of batches left.
START_LEAD = 1.5


class PreinitLoader(EpochLoader):
    """Thesis Alg. 6: a background thread builds the next epoch's iterator and fetches its first
    batch while the current epoch trains, hiding worker start-up and pipeline warm-up.

    The next epoch is started late, when the batches left in the current one should take about
    `START_LEAD` times the shortest start-up measured so far: early enough to hide it, late enough
    that the two epochs' workers do not compete for the cores for the whole epoch (on a 2-core node
    starting them at the epoch's beginning made every epoch 1.27x slower). Epoch e+1 is always
    started after epoch e has fetched its first batch, so the loader's generator is drawn from in
    the same order as the standard loader's and the batches are identical. Workers are forked from
    the helper thread; the main thread never holds a DataLoader lock while that happens.
    """

    def __init__(self, loader: DataLoader, device: torch.device | None = None):
        if loader.persistent_workers:
            raise ValueError(
                "loader.preinit: not with loader.persistent_workers=true (a persistent loader has "
                "a "
                "single iterator that cannot be started while the current epoch uses "
                "it)"
            )
        super().__init__(loader)
        # a new thread's current CUDA device is 0: make it the run's before DataLoader starts its
        # pin-memory thread
        cuda = device is not None and device.type == "cuda"
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mmhpc-preinit",
                                        initializer=torch.cuda.set_device if cuda else None,
                                        initargs=(device,) if cuda else ())
        self._pending: tuple[int, Future] | None = None
        self._live: list = []
        self._lock = threading.Lock()
        self._startup_s = float(
            "inf"
        )  # the shortest start-up measured (one made under contention runs longer)

    def _start(self, epoch: int) -> _Started:
        t0 = time.perf_counter()
        self._set_epoch(epoch)
        with deaf_children():
            it = iter(self.loader)
        with self._lock:
            self._live.append(it)
        first = next(it, _END)
        return _Started(it, first, time.perf_counter() - t0)

    def prefetch(self, epoch: int) -> None:
        """Start pre-initialising `epoch` now, unless it is started already."""
        if self._pending is None:
            self._pending = (epoch, self._pool.submit(self._start, epoch))

    def epoch(self, epoch: int) -> Iterator:
        if self._pending is not None and self._pending[0] != epoch:
            self._drop_pending()
        self.prefetch(epoch)
        started = self._pending[1].result()
        self._pending = None
        self._retire(keep=started.it)
        self._startup_s = min(self._startup_s, started.seconds)
        return self._paced(started, epoch)

    def _paced(self, started: _Started, epoch: int) -> Iterator:
        """The epoch's batches; starts epoch + 1 once the time left is about START_LEAD
        start-ups."""
        total, t0 = len(self.loader), time.perf_counter()
        for done, batch in enumerate(started, start=1):
            yield batch  # the trainer works on it; the time to the next request is one step
            per_batch = (time.perf_counter() - t0) / done
            left = total - done
            # at the latest with the last batch, so its step overlaps the start-up
            if self._pending is None and (
                left <= 1 or left * per_batch <= START_LEAD * self._startup_s
            ):
                self.prefetch(epoch + 1)

    def _retire(self, keep=None) -> None:
        """Shut down iterators of finished epochs so their workers exit now, not at garbage
        collection."""
        with self._lock:
            old = [it for it in self._live if it is not keep]
            self._live = [it for it in self._live if it is keep]
        for it in old:
            _shutdown(it)

    def _drop_pending(self) -> None:
        if self._pending is not None:
            try:
                self._pending[1].result()
            except Exception:  # noqa: BLE001 - the epoch is abandoned; its error has no reader
                pass
            self._pending = None

    def close(self) -> None:
        """Stop the helper thread and every worker process; safe after an exception or Ctrl-C."""
        self._drop_pending()
        self._retire()
        self._pool.shutdown(wait=True)


def _shutdown(it) -> None:
    stop = getattr(it, "_shutdown_workers", None)
    if stop is not None:
        stop()
