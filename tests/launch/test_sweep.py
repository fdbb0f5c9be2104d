"""Sweeps and cluster profiles without a scheduler: expansion, validation (all errors, naming run
and field), profile loading, capability checks, run states, and golden sbatch scripts for Alvis."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

from mmhpc.config import load_config
from mmhpc.errors import ConfigError
from mmhpc.launch import store
from mmhpc.launch.clusters import ClusterError, load_profile, profile_from_dict, resolve_resources
from mmhpc.launch.submit import prepare_sweep, render_scripts, submit_sweep, to_resubmit
from mmhpc.results import RunRecord, write_record
from mmhpc.sweep import SweepError, expand, format_table, load_sweep

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parents[1] / "golden"

pytestmark = pytest.mark.usefixtures("isolated_env")


def write_sweep(tmp_path, spec: dict, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


# ---- expansion
# ---------------------------------------------------------------------------------------------

def test_grid_zip_seeds_expand_in_a_stable_order():
    spec = {"name": "t", "base": {"data.dataset": "cremad"},
            "grid": {"system.precision": ["fp32", "bf16"]},
            "zip": {"train.batch_size": [32, 64], "train.lr": [0.001, 0.002]},
            "seeds": [0, 1]}
    plan = expand(spec, load_profile("none")).check()
    assert len(plan.runs) == 2 * 2 * 2
    assert [r.index for r in plan.runs] == list(range(8))
    first, last = plan.runs[0], plan.runs[-1]
    assert first.name == "precision-fp32_batch_size-32_lr-0.001_s0"
    assert last.name == "precision-bf16_batch_size-64_lr-0.002_s1"
    assert (last.config.system.precision, last.config.train.batch_size, last.config.train.lr,
            last.config.train.seed) == ("bf16", 64, 0.002, 1)
    # every sweep run: its own record under the sweep, checkpointed for requeue, never overwriting
    assert first.config.output.name == first.name and first.config.output.checkpoint
    assert not first.config.output.overwrite
    assert len({r.name for r in plan.runs}) == 8
    assert "8 runs on none (tiny), 8 to submit" in format_table(plan)


def test_tiny_size_uses_the_tiny_preset_and_replaces_axes():
    spec = {
        "name": "t",
        "base": {"train.epochs": 100, "data.source": "prepared", "data.root": "/data/cremad"},
        "grid": {"loader.num_workers": [16, 32]},
        "tiny": {"grid": {"loader.num_workers": [0, 1]}, "base": {"train.max_batches": 3}},
    }
    tiny = expand(spec, load_profile("none"), "tiny").check()
    c = tiny.runs[1].config
    assert (
        c.data.preset,
        c.data.source,
        c.train.epochs,
        c.train.max_batches,
        c.loader.num_workers,
    ) == ("tiny", "synthetic", 1, 3, 1)
    full = expand(spec, load_profile("none"), "full").check()
    assert [r.config.loader.num_workers for r in full.runs] == [16, 32]
    assert full.runs[0].config.train.epochs == 100


def test_blocks_are_a_union_and_resources_axes_vary_the_allocation():
    spec = {
        "name": "t",
        "base": {"data.dataset": "cremad"},
        "grid": {"resources.gpu": ["A100", "A40"]},
        "blocks": [
            {"name": "one", "grid": {"system.parallelism": ["single"]}},
            {
                "name": "two",
                "base": {"system.parallelism": "ddp"},
                "zip": {"resources.gpus": [2, 4]},
            },
        ],
    }
    plan = expand(spec, load_profile("alvis", "NAISS1")).check()
    assert [r.name for r in plan.runs] == [
        "one_gpu-A100_parallelism-single_s0",
        "one_gpu-A40_parallelism-single_s0",
        "two_gpu-A100_gpus-2_s0",
        "two_gpu-A100_gpus-4_s0",
        "two_gpu-A40_gpus-2_s0",
        "two_gpu-A40_gpus-4_s0",
    ]
    labels = [r.resources.label() for r in plan.runs]
    assert labels == ["A100x1-t1-240m", "A40x1-t1-240m", "A100x2-t2-240m", "A100x4-t4-240m",
                      "A40x2-t2-240m", "A40x4-t4-240m"]


def test_set_overrides_every_run_and_fills_dataset_into_data_root():
    spec = {"name": "t", "grid": {"data.dataset": ["cremad", "mvsa"]}}
    overrides = ["data.source=prepared", "data.root=/mimer/data/{dataset}"]
    plan = expand(spec, load_profile("alvis", "NAISS1"), overrides=overrides).check()
    assert [(r.config.data.source, r.config.data.root) for r in plan.runs] == [
        ("prepared", "/mimer/data/cremad"), ("prepared", "/mimer/data/mvsa")]


def test_shipped_sweeps_expand_on_every_cluster():
    for path in sorted((REPO / "sweeps").glob("*.yaml")):
        for cluster in ("none", "local", "alvis"):
            plan = expand(load_sweep(path), load_profile(cluster, "NAISS1"))
            assert not plan.errors, (path.name, cluster, plan.errors)
            assert plan.runnable(), (path.name, cluster)


def test_parallelism_sweep_on_cpu_runs_single_ddp_blp_and_marks_dp_not_applicable():
    plan = expand(load_sweep(REPO / "sweeps" / "parallelism.yaml"), load_profile("local")).check()
    by_par = {r.config.system.parallelism: r for r in plan.runs}
    assert set(by_par) == {"single", "dp", "ddp", "blp"}
    assert "needs >= 2 CUDA GPUs" in by_par["dp"].not_applicable
    assert by_par["ddp"].resources.tasks_per_node == 2 and by_par["ddp"].resources.gpu is None
    assert by_par["blp"].resources.tasks_per_node == 1
    assert all(r.config.data.preset == "tiny" for r in plan.runs)


# ---- validation: all errors at once, each naming run and field
# ----------------------------------------------

def test_one_bad_run_submits_nothing_and_every_error_is_listed(tmp_path):
    spec = {"name": "bad", "grid": {"system.precision": ["fp32", "fp16", "bf16"]},
            "zip": {"resources.gpu": ["A100", "V100"]}}
    path = write_sweep(tmp_path, spec)
    with pytest.raises(SweepError) as e:
        submit_sweep(path, "alvis", account="NAISS1", results=tmp_path / "results")
    errors = e.value.errors
    assert len(errors) == 2  # fp16 (on both GPUs: one line naming both runs), bf16 on the V100
    assert errors[0] == (
        f"{path}: run 2 (precision-fp16_gpu-A100_s0), run 3 (precision-fp16_gpu-V100_s0): "
        "system.precision: invalid value 'fp16'; valid: fp32, fp32_strict, tf32, "
        "bf16"
    )
    assert (
        errors[1].startswith(
            f"{path}: run 5 (precision-bf16_gpu-V100_s0): system.precision: bf16 needs "
            "compute capability 8.0+, V100 has 7.0"
        )
        and "; valid: fp32, fp32_strict" in errors[1]
    )
    assert "nothing submitted" in str(e.value)
    assert not (tmp_path / "results").exists()


def test_structure_errors_name_the_key_and_the_valid_keys():
    """The file's shape, its axis keys and zip lengths in one round (the axes used to wait for the
    shape)."""
    with pytest.raises(SweepError) as e:
        expand({"name": "x", "grids": {}, "zip": {"train.lr": [1, 2], "train.batch_size": [8]},
                "grid": {"system.nope": [1]}, "seeds": []}, load_profile("none")).check()
    text = str(e.value)
    assert "grids: unknown key; valid: name, description, base, grid" in text
    assert "seeds: list should have at least 1 item" in text
    assert "zip: lists must have equal lengths, got train.lr=2, train.batch_size=1" in text
    assert "grid.system.nope: unknown key; did you mean system." in text


def test_a_problem_of_many_runs_is_one_line_with_their_count():
    """A typo in `base` is one line for all runs (algorithms.yaml used to print it 474 times), one
    in a block's base one line with the count and indices of that block's runs; each line names its
    runs, also a run's second problem (which used to follow the first without the run's name)."""
    block = {"grid": {"train.lr": [0.1, 0.2, 0.3, 0.4, 0.5]}}
    spec = {
        "name": "g",
        "base": {"lrr": 0.1, "train.epochss": 3},
        "seeds": [0, 1],
        "blocks": [
            {"name": "a", **block},
            {"name": "b", "base": {"model.fusionn": "concat"}, **block},
        ],
    }
    plan = expand(spec, load_profile("none"), file="g.yaml")
    assert "20 runs on none (tiny), 20 invalid (nothing to submit)" in format_table(
        plan
    )  # was "20 to submit"
    errors = plan.errors  # `lrr` used to end the expansion at once
    assert errors[0].startswith("g.yaml: all 20 runs: lrr: unknown key")
    assert errors[1:] == [
        "g.yaml: all 20 runs: train.epochss: unknown key; valid: epochs, batch_size, optimizer, "
        "lr, "
        "momentum, weight_decay, lr_decay_epoch, lr_decay, seed, max_batches, "
        "single_acc",
        "g.yaml: 10 of 20 runs (10-19): model.fusionn: unknown key; valid: fusion, "
        "embed_dim, cosine, "
        "cosine_scale, control, text_size, text_pretrained, embedding_dropout, "
        "audio_augment",
    ]
    plan = expand(
        {"name": "two", "zip": {"train.batch_size": [0, 8], "train.lr": [-1, 0.1]}},
        load_profile("none"),
    )
    assert plan.errors == ["run 0 (batch_size-0_lr--1_s0): train.batch_size: 0 must be > 0",
                           "run 0 (batch_size-0_lr--1_s0): train.lr: -1 must be > 0"]


def test_duplicate_names_and_sweep_owned_keys_are_errors():
    plan = expand(
        {"name": "d", "grid": {"train.lr": [0.1, 0.1]}, "base": {"output.overwrite": True}},
        load_profile("none"),
    )
    text = "\n".join(plan.errors)
    assert "run 1 (lr-0.1_s0): output.name: same name as run 0" in text
    assert "run 0 (lr-0.1_s0), run 1 (lr-0.1_s0): output.overwrite: set by the sweep" in text


# ---- cluster profiles
# ----------------------------------------------------------------------------------------

def test_builtin_profiles_load_and_validate():
    alvis = load_profile("alvis")
    assert alvis.partition == "alvis" and alvis.max_time_min == 7 * 24 * 60
    assert {"A100", "A100fat", "A40", "V100", "T4"} <= set(alvis.gpus)
    assert alvis.gpus["V100"].capability < 8.0 <= alvis.gpus["A40"].capability
    assert load_profile("local").partition == "debug" and not load_profile("local").is_gpu
    assert load_profile("none").scheduler == "none"
    with pytest.raises(
        ClusterError,
        match="cluster: invalid value 'nope'; valid: alvis, arrhenius, berzelius, local, none, a "
        "profile file",
    ):
        load_profile("nope")


def test_alvis_account_and_results_root_come_from_the_environment(monkeypatch):
    with pytest.raises(ClusterError, match="account: cluster alvis needs a SLURM account"):
        load_profile("alvis").check_account()
    monkeypatch.setenv("MMHPC_ACCOUNT", "NAISS2025-22-123")
    alvis = load_profile("alvis")
    assert alvis.account == "NAISS2025-22-123"
    assert alvis.results_dir() == Path("/mimer/NOBACKUP/groups/naiss2025-22-123/mmhpc")
    assert load_profile("alvis", account="NAISS9").account == "NAISS9"  # --account wins
    monkeypatch.setenv("MMHPC_RESULTS", "/elsewhere")
    assert load_profile("alvis").results_dir() == Path("/elsewhere")
    monkeypatch.setenv("MMHPC_APPTAINER", "/img/mmhpc.sif")
    alvis = load_profile("alvis")
    assert alvis.interpreter() == "apptainer exec --nv /img/mmhpc.sif python"
    assert not any(line.startswith("module") for line in alvis.setup_lines())


def test_user_file_adds_clusters_that_extend_builtin_ones(tmp_path, monkeypatch):
    user = tmp_path / "clusters.yaml"
    user.write_text(
        yaml.safe_dump(
            {
                "alvis-short": {
                    "extends": "alvis",
                    "max_time_min": 60,
                    "time_min": 30,
                    "account": "NAISS7",
                }
            }
        )
    )
    monkeypatch.setenv("MMHPC_CLUSTERS", str(user))
    p = load_profile("alvis-short")
    assert (p.partition, p.max_time_min, p.account) == ("alvis", 60, "NAISS7")
    user.write_text(yaml.safe_dump({"x": {"scheduler": "pbs"}}))
    with pytest.raises(
        ClusterError, match=r"clusters.yaml: x.scheduler: invalid value 'pbs'; valid: slurm, none"
    ):
        load_profile("x")


def test_profile_validation_names_the_field():
    with pytest.raises(
        ClusterError, match=r"p.yaml: partiton: unknown key; valid: name, scheduler"
    ):
        profile_from_dict({"name": "a", "scheduler": "slurm", "partiton": "x"}, "p.yaml")
    assert (
        profile_from_dict({"name": "a", "scheduler": "slurm"}, "p.yaml").partition is None
    )  # the site's default
    with pytest.raises(
        ClusterError, match=r"p.yaml: sweep_gpus: invalid value 'H100'; valid: A100"
    ):
        profile_from_dict(
            {
                "name": "a",
                "scheduler": "none",
                "default_gpu": "A100",
                "sweep_gpus": ["H100"],
                "gpus": {"A100": {"capability": 8.0, "nodes": [{"gpus": 4, "cores": 64}]}},
            },
            "p.yaml",
        )
    with pytest.raises(ClusterError, match=r"default_gpu: invalid value 'H100'; valid: A100"):
        profile_from_dict(
            {
                "name": "a",
                "scheduler": "none",
                "gpus": {"A100": {"capability": 8.0, "nodes": [{"gpus": 4, "cores": 64}]}},
                "default_gpu": "H100",
            }
        )


# ---- capability checks
# ---------------------------------------------------------------------------------------

def _resolve(cluster, request=None, **overrides):
    cfg = load_config(None, [f"{k.replace('__', '.')}={v}" for k, v in overrides.items()])
    return resolve_resources(load_profile(cluster, "NAISS1"), cfg, request or {})


@pytest.mark.parametrize("gpu", ["V100", "T4"])
@pytest.mark.parametrize("precision", ["bf16", "tf32"])
def test_bf16_and_tf32_are_refused_below_compute_capability_8(gpu, precision):
    _, errors, na = _resolve("alvis", {"gpu": gpu}, system__precision=precision)
    assert na is None and len(errors) == 1
    assert errors[0].startswith(
        f"system.precision: {precision} needs compute capability 8.0+, {gpu}"
    )
    assert "; valid: fp32, fp32_strict (or resources.gpu: A100, A100fat, A40)" in errors[0]
    _, errors, _ = _resolve("alvis", {"gpu": "A100"}, system__precision=precision)
    assert errors == []


def test_gpu_count_follows_parallelism():
    res, errors, _ = _resolve("alvis", {"gpu": "A100", "gpus": 4}, system__parallelism="ddp")
    assert (res.gpus_per_node, res.tasks_per_node, errors) == (4, 4, [])  # one task per GPU
    res, errors, _ = _resolve(
        "alvis", {"gpu": "A40"}, system__parallelism="blp", data__dataset="iemocap"
    )
    assert (res.gpus_per_node, res.tasks_per_node, errors) == (3, 1, [])  # one GPU per modality
    res, errors, _ = _resolve("alvis", {"gpu": "A40", "gpus": 4}, system__parallelism="single")
    assert res.gpus_per_node == 1
    _, errors, _ = _resolve("alvis", {"gpus": 1}, system__parallelism="dp")
    assert len(errors) == 1 and errors[0].startswith(
        "system.parallelism: dp (nn.DataParallel) needs >= 2 CUDA GPUs, "
        "this run has 1; valid: single"
    )
    _, errors, _ = _resolve("alvis", {"gpus": 8}, system__parallelism="ddp")
    assert "resources.gpus: ddp needs 8 GPUs per node, A40 nodes have 4" in errors[0]
    res, errors, _ = _resolve(
        "alvis", {"gpu": "A100", "gpus": 4, "nodes": 2}, system__parallelism="ddp"
    )
    assert (res.nodes, res.tasks_per_node, errors) == (2, 4, [])
    _, errors, _ = _resolve("alvis", {"nodes": 2})
    assert errors[0].startswith("resources.nodes: 2 nodes need system.parallelism=ddp")
    _, errors, _ = _resolve("alvis", {"gpus": 3}, system__parallelism="ddp")
    assert errors == [
        "train.batch_size: 64 is not divisible by the 3 DDP processes; the global batch is split "
        "evenly"
    ]
    _, errors, _ = _resolve("alvis", {"time_min": 7 * 24 * 60 + 1})
    assert "exceeds the alvis limit of 10080 minutes (7 days)" in errors[0]
    _, errors, _ = _resolve("alvis", {"gpu": "H100"})
    assert errors == [
        "resources.gpu: invalid value 'H100' on alvis; valid: A100, A100fat, A40, V100, T4"
    ]


def test_cpu_clusters_mark_dp_and_tf32_not_applicable():
    _, errors, na = _resolve("local", system__parallelism="dp")
    assert errors == [] and "dp (nn.DataParallel) needs >= 2 CUDA GPUs" in na
    _, errors, na = _resolve("local", system__precision="tf32")
    assert "tf32 is a tensor-core format" in na
    res, errors, na = _resolve("local", system__parallelism="ddp")
    assert (res.tasks_per_node, res.gpu, errors, na) == (2, None, [], None)
    res, _, na = _resolve("none", system__precision="bf16", system__parallelism="blp")
    assert na is None and res.tasks_per_node == 1


# ---- run states and resume selection
# ----------------------------------------------------------------------

def test_manifest_is_one_line_per_run_and_a_partial_save_keeps_every_change(tmp_path):
    """The manifest is JSON with one line per run (the C encoder: indented JSON took seconds per
    save for 10,000 runs); a save that names the changed runs writes them and keeps the others as
    saved."""
    import json

    plan = expand(
        {"name": "m", "grid": {"train.lr": [0.1, 0.2, 0.3]}}, load_profile("none")
    ).check()
    sweep_dir = store.SweepDir(tmp_path / "m")
    manifest = store.create(sweep_dir, plan, None)
    lines = sweep_dir.manifest_path.read_text().splitlines()
    assert len(lines) == 5 and [json.loads(ln.rstrip(","))["index"] for ln in lines[1:4]] == [
        0,
        1,
        2,
    ]
    manifest["runs"][1]["jobs"].append(
        {"job_id": "7_1", "job_name": "a", "task": 1, "scheduler": "slurm"}
    )
    sweep_dir.save(manifest, [manifest["runs"][1]])
    manifest["runs"][2]["jobs"].append(
        {"job_id": "8_0", "job_name": "b", "task": 0, "scheduler": "slurm"}
    )
    manifest["arrays"].append({"job_id": "8", "job_name": "b", "runs": [2]})
    sweep_dir.save(manifest, [manifest["runs"][2]])
    assert store.SweepDir(sweep_dir.path).load() == manifest
    with pytest.raises(ConfigError):  # a changed run is still checked before anything is written
        manifest["runs"][0]["jobs"].append({"task": "first"})
        sweep_dir.save(manifest, [manifest["runs"][0]])
    assert store.SweepDir(sweep_dir.path).load()["runs"][0]["jobs"] == []


def test_states_come_from_records_first_then_slurm(tmp_path, monkeypatch):
    spec = {
        "name": "st",
        "grid": {
            "train.lr": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
            "system.parallelism": ["single", "dp"],
        },
    }
    profile = load_profile("local")
    sweep_dir = store.SweepDir(tmp_path / "st")
    plan = expand(spec, profile, runs_dir=sweep_dir.runs_dir).check()
    manifest = store.create(sweep_dir, plan, write_sweep(tmp_path, spec))
    runs = [r for r in manifest["runs"] if not r["not_applicable"]]
    assert len(runs) == 6 and len(manifest["runs"]) == 12
    for i, run in enumerate(runs[:5]):
        run["jobs"].append({"job_id": f"7_{i}", "scheduler": "slurm"})
    sweep_dir.runs_dir.mkdir()
    for run, status, error in ((runs[0], "done", None), (runs[3], "failed", "ValueError: boom"),
                               (runs[4], "running", None)):
        write_record(sweep_dir.record_path(run["name"]),
                     RunRecord(run=run["name"], status=status, config=run["config"], error=error))
    sched = {"7_0": ("COMPLETED", ""), "7_1": ("PENDING", "Resources"), "7_2": ("RUNNING", ""),
             "7_3": ("FAILED", ""), "7_4": ("CANCELLED", "")}
    view = store.SchedulerView(
        squeue={k: (*v, "x") for k, v in sched.items() if k in ("7_1", "7_2")},
        sacct={k: (*v, "x") for k, v in sched.items()},
    )
    monkeypatch.setattr(store, "query_scheduler", lambda ids, names, since=None: view)
    states = {s.name: s for s in store.run_states(sweep_dir, manifest)}
    got = [(states[r["name"]].state, states[r["name"]].reason) for r in runs]
    assert got == [
        ("done", ""),
        ("pending", "Resources"),
        ("running", ""),
        ("failed", "SLURM FAILED; ValueError: boom"),
        ("failed", "SLURM CANCELLED"),
        ("unsubmitted", ""),
    ]
    assert sum(s.state == "n/a" for s in states.values()) == 6
    assert to_resubmit(sweep_dir, manifest) == [
        runs[3]["index"],
        runs[4]["index"],
        runs[5]["index"],
    ]
    # the same directory takes the same sweep again (resume), but not a different one
    assert store.create(sweep_dir, plan, None) is not None
    other = expand(
        {**spec, "base": {"model.fusion": "late_sum"}}, profile, runs_dir=sweep_dir.runs_dir
    )
    with pytest.raises(SweepError, match="holds a different expansion of sweep st"):
        store.create(sweep_dir, other, None)


# ---- sbatch scripts: typed GPUs, arrays, DDP tasks; golden files
# ------------------------------------------

def _render(tmp_path, spec: dict, cluster: str = "alvis", account: str = "NAISS2025-22-000") -> str:
    path = write_sweep(tmp_path, spec)
    profile, plan, sweep_dir = prepare_sweep(path, cluster, account=account, results="/RESULTS",
                                             dry_run=True)
    runs = [
        {"index": r.index, "name": r.name, "resources": r.resources.to_dict()}
        for r in plan.runnable()
    ]
    return render_scripts(sweep_dir, profile, plan.name, runs).replace(sys.executable, "PYTHON")


GOLDEN_CASES = {
    "alvis_a100x4_ddp.sbatch": {
        "name": "ddp",
        "base": {"data.dataset": "cremad"},
        "grid": {"system.parallelism": ["ddp"]},
        "resources": {"alvis": {"gpu": "A100", "gpus": 4, "time_min": 600}},
    },
    "alvis_a40x1_array.sbatch": {
        "name": "precision",
        "grid": {"system.precision": ["fp32", "tf32", "bf16"]},
        "resources": {"alvis": {"gpu": "A40"}},
    },
    # Arrhenius: typed gres nvidia_gh200_120gb, -A <project>-gpu, the node's venv, Slingshot's NCCL
    # lines only for the multi-node run
    "arrhenius_gh200x4_ddp_2nodes.sbatch": {
        "name": "ddp",
        "base": {"data.dataset": "cremad", "system.parallelism": "ddp"},
        "resources": {"arrhenius": {"gpus": 4, "nodes": 2}},
    },
    "arrhenius_gh200x1_array.sbatch": {
        "name": "precision",
        "grid": {"system.precision": ["fp32", "bf16"]},
    },
    # Berzelius: no partition, --gpus=N and the node kind as a constraint (thin by default, fat on
    # request)
    "berzelius_a100x1_array.sbatch": {
        "name": "precision",
        "grid": {"system.precision": ["fp32", "tf32"]},
    },
    "berzelius_a100fat_x8_ddp.sbatch": {
        "name": "ddp",
        "base": {"system.parallelism": "ddp"},
        "resources": {"berzelius": {"gpu": "A100fat", "gpus": 8}},
    },
}


def test_cli_expand_lists_runs_and_all_errors(tmp_path, capsys):
    from mmhpc.cli import main

    good = write_sweep(
        tmp_path, {"name": "ok", "grid": {"system.parallelism": ["single", "dp"]}}, "ok.yaml"
    )
    assert main(["sweep", "expand", str(good), "--cluster", "local"]) == 0
    out = capsys.readouterr().out
    assert "parallelism-single_s0" in out and "1 not applicable" in out
    bad = write_sweep(
        tmp_path, {"name": "bad", "grid": {"train.batch_size": [0, 8, -1]}}, "bad.yaml"
    )
    assert (
        main(["sweep", "submit", str(bad), "--cluster", "none", "--results", str(tmp_path / "r")])
        == 2
    )
    err = capsys.readouterr().err
    assert "run 0 (batch_size-0_s0): train.batch_size: 0 must be > 0" in err
    assert "run 2 (batch_size--1_s0): train.batch_size: -1 must be > 0" in err
    assert "nothing submitted" in err and not (tmp_path / "r").exists()


def test_cli_dry_run_prints_sbatch_scripts(tmp_path, capsys):
    from mmhpc.cli import main

    assert (
        main(
            [
                "sweep",
                "submit",
                str(REPO / "sweeps" / "batch.yaml"),
                "--cluster",
                "alvis",
                "--dry-run",
                "--results",
                str(tmp_path / "r"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "#SBATCH --array=" in out and "#SBATCH --gpus-per-node=A100:4" in out
    assert (
        "#SBATCH --account=NAISSxxxx-xx-xx" in out
    )  # no account set: a placeholder, for a dry run only
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("golden", sorted(GOLDEN_CASES))
def test_sbatch_scripts_match_the_golden_files(golden, tmp_path, monkeypatch):
    cluster = golden.split("_")[0]
    if (
        cluster != "alvis"
    ):  # the jobs run the node's venv (built on a GPU node), not this interpreter
        monkeypatch.setenv("MMHPC_VENV", "/NODE/venv")
    text = _render(tmp_path, GOLDEN_CASES[golden], cluster,
                   "NAISS2025-22-000" if cluster == "alvis" else "naiss2026-1-1")
    path = GOLDEN / golden
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), (
        f"regenerate with UPDATE_GOLDEN=1 if the change is intended: {path}"
    )
    assert not Path("/RESULTS").exists()  # rendering writes nothing


def test_rendered_scripts_carry_arrays_typed_gpus_and_ddp_tasks(tmp_path):
    ddp = _render(tmp_path, GOLDEN_CASES["alvis_a100x4_ddp.sbatch"])
    assert "#SBATCH --gpus-per-node=A100:4" in ddp and "#SBATCH --ntasks-per-node=4" in ddp
    assert "#SBATCH --array" not in ddp and "#SBATCH --account=NAISS2025-22-000" in ddp
    assert "#SBATCH --signal=USR2@120" in ddp and "#SBATCH --time=600" in ddp
    array = _render(tmp_path, GOLDEN_CASES["alvis_a40x1_array.sbatch"])
    assert "#SBATCH --array=0-2%3" in array and "#SBATCH --gpus-per-node=A40:1" in array
    assert "#SBATCH --partition=alvis" in array and "module load" in array
    multi = _render(tmp_path, {"name": "m", "base": {"system.parallelism": "ddp"},
                               "resources": {"alvis": {"gpu": "A100", "gpus": 4, "nodes": 2}}})
    assert "#SBATCH --nodes=2" in multi and "#SBATCH --ntasks-per-node=4" in multi
