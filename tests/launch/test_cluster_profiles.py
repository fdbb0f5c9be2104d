"""Profiles of real clusters (Arrhenius, Berzelius, Alvis kept), sweeps that take the cluster's GPU
types, placeholder accounts, the architecture of the jobs' interpreter, ROCm builds, and `mmhpc
clusters discover` on recorded outputs of three cluster shapes (tests/clusters/)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_ok

from mmhpc.config import load_config
from mmhpc.launch.clusters import ClusterError, load_profile, resolve_resources
from mmhpc.launch.discover import COMMANDS, discover, minutes, parse_gres, parse_probe, validate
from mmhpc.sweep import expand, load_sweep

REPO = Path(__file__).resolve().parents[2]
SHAPES = REPO / "tests" / "clusters"

pytestmark = pytest.mark.usefixtures("isolated_env")


def _runs(sweep: str, cluster: str, account: str = "naiss2026-1-1"):
    plan = expand(
        load_sweep(REPO / "sweeps" / f"{sweep}.yaml"), load_profile(cluster, account), "full"
    )
    return plan


# ---- profiles
# ------------------------------------------------------------------------------------------

def test_arrhenius_asks_for_typed_gh200_with_the_gpu_account_and_keeps_storage_under_the_project():
    p = load_profile("arrhenius", "naiss2026-1-1")
    assert (p.partition, p.arch, p.fabric, p.default_gpu) == (
        "gpu",
        "aarch64",
        "slingshot",
        "GH200",
    )
    assert p.gpus["GH200"].gres_type == "nvidia_gh200_120gb" and p.gpus["GH200"].capability == 9.0
    assert p.job_account == "naiss2026-1-1-gpu"
    assert (
        load_profile("arrhenius", "naiss2026-1-1-gpu").job_account == "naiss2026-1-1-gpu"
    )  # never twice
    assert str(p.results_dir()) == "/nobackup/proj/naiss2026-1-1/mmhpc"
    assert (
        str(load_profile("arrhenius", "naiss2026-1-1-gpu").results_dir())
        == "/nobackup/proj/naiss2026-1-1/mmhpc"
    )


def test_berzelius_has_no_partition_and_picks_thin_or_fat_by_constraint():
    p = load_profile("berzelius", "b")
    assert p.partition is None and p.gpu_request == "gpus"
    assert (p.gpus["A100"].constraint, p.gpus["A100fat"].constraint) == ("thin", "fat")
    assert p.gpus["A100"].cores_per_gpu(1) == 16


def test_alvis_is_kept_and_marked_historical():
    assert "historical" in load_profile("alvis").description


def test_sweeps_take_the_clusters_gpu_types():
    """`resources.gpu: [cluster]`: Alvis keeps today's A100/A40 runs, Arrhenius gets GH200,
    Berzelius thin."""
    for sweep in ("parallelism", "precision", "overall"):
        alvis = _runs(sweep, "alvis")
        assert {r.request["gpu"] for r in alvis.runs} == {"A100", "A40"} and not alvis.errors
        assert all(("A100" in r.name) != ("A40" in r.name) for r in alvis.runs)
        arrhenius = _runs(sweep, "arrhenius")
        assert {r.request["gpu"] for r in arrhenius.runs} == {"GH200"} and not arrhenius.errors, (
            arrhenius.errors
        )
        assert {r.request["gpu"] for r in _runs(sweep, "berzelius").runs} == {"A100"}


def test_multi_node_on_slingshot_gets_the_fabric_lines_single_node_does_not(tmp_path):
    from mmhpc.launch.submit import slurm_parameters

    p = load_profile("arrhenius", "a")
    res, errors, _ = resolve_resources(
        p, load_config(None, ["system.parallelism=ddp"]), {"gpus": 4, "nodes": 2}
    )
    assert errors == [] and "module load aws-ofi-nccl" in slurm_parameters(p, res, "j")["setup"]
    one, _, _ = resolve_resources(p, load_config(None, ["system.parallelism=ddp"]), {"gpus": 4})
    assert "module load aws-ofi-nccl" not in (slurm_parameters(p, one, "j").get("setup") or [])
    p.fabric_setup = []
    _, errors, _ = resolve_resources(
        p, load_config(None, ["system.parallelism=ddp"]), {"gpus": 4, "nodes": 2}
    )
    assert errors and "aws-ofi-nccl" in errors[0]


@pytest.mark.slow
def test_make_dry_run_for_arrhenius_and_berzelius(make_sweep, tmp_path):
    """The acceptance lines: arrhenius parallelism and berzelius precision, DRY_RUN=1."""
    env = {"MMHPC_ACCOUNT": "naiss2026-1-1", "MMHPC_VENV": "/proj/venv-aarch64"}
    text = make_sweep("sweep-parallelism", "arrhenius", **env)
    assert "#SBATCH --gpus-per-node=nvidia_gh200_120gb:1" in text and "nvidia_gh200_120gb:2" in text
    assert "#SBATCH --account=naiss2026-1-1-gpu" in text and "#SBATCH --partition=gpu" in text
    assert (
        "#SBATCH --cpus-per-task=72" in text
        and "/proj/venv-aarch64/bin/python -u -m submitit" in text
    )
    assert "module load" not in text and "PyTorch-bundle" not in text and "alvis" not in text
    text = make_sweep("sweep-precision", "berzelius", **env)
    assert "#SBATCH --gpus=1" in text and "#SBATCH --constraint=thin" in text
    assert "--partition" not in text and "--gpus-per-node" not in text
    assert not (tmp_path / "r").exists()


# ---- placeholder accounts (issue 20, item 5)
# -------------------------------------------------------------

def test_a_dry_run_without_account_warns_about_the_placeholder(tmp_path, capsys):
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
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert (
        "placeholder" in err
        and "NAISSxxxx-xx-xx" in err
        and "/mimer/NOBACKUP/groups/naissxxxx-xx-xx" in err
    )


def test_a_real_submission_with_a_placeholder_is_refused(tmp_path, capsys):
    from mmhpc.cli import main

    for extra in ([], ["--account", "NAISSxxxx-xx-xx"]):
        assert main(["sweep", "submit", str(REPO / "sweeps" / "batch.yaml"), "--cluster", "alvis",
                     "--results", str(tmp_path / "r")] + extra) == 2
        err = capsys.readouterr().err
        assert "MMHPC_ACCOUNT" in err and "valid: NAISSxxxx" not in err
    assert not (tmp_path / "r").exists()


def test_doctor_never_calls_a_placeholder_path_ok(capsys):
    from mmhpc.cli import main

    assert main(["doctor", "--cluster", "alvis"]) != 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if " results " in ln)
    assert line.startswith("FAIL") and "placeholder" in line and "MMHPC_PROJECT" in line


# ---- architecture and ROCm
# -------------------------------------------------------------------------------

def test_doctor_refuses_an_x86_venv_on_an_aarch64_node(monkeypatch, capsys):
    """Stubbed aarch64 node; the venv is this machine's (x86_64): exit 2, the mismatch named."""
    from mmhpc import doctor
    from mmhpc.cli import main

    if doctor.binary_arch(sys.executable) != "x86_64":
        pytest.fail("this test needs an x86_64 interpreter to stand for the wrong venv")
    monkeypatch.setattr(doctor, "node_arch", lambda: "aarch64")
    assert main(["doctor"]) == 2
    assert "is built for x86_64, this node is aarch64" in capsys.readouterr().out
    monkeypatch.setattr(
        doctor, "node_arch", lambda: "x86_64"
    )  # the login node, with the cluster's venv
    monkeypatch.setenv("MMHPC_VENV", str(Path(sys.executable).parent.parent))
    monkeypatch.setenv("MMHPC_ACCOUNT", "naiss2026-1-1")
    assert main(["doctor", "--cluster", "arrhenius"]) == 2
    out = capsys.readouterr().out
    assert (
        "FAIL  arch" in out
        and "built for x86_64" in out
        and "nodes of arrhenius are aarch64" in out
    )
    assert "make install-cluster CLUSTER=arrhenius" in out


def test_binary_arch_reads_elf_and_sif_headers(tmp_path):
    from mmhpc.doctor import binary_arch

    sif = tmp_path / "img.sif"
    sif.write_bytes(
        b"#!/usr/bin/env run-singularity\n".ljust(32, b"\0") + b"SIF_MAGIC\0" + b"01\0" + b"04\0"
    )
    assert binary_arch(sif) == "aarch64" and binary_arch(sys.executable) in ("x86_64", "aarch64")
    assert binary_arch(tmp_path / "missing") is None


def test_doctor_recognises_a_rocm_torch(monkeypatch, tmp_path):
    import torch

    from mmhpc import doctor

    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", "6.2.41133", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "AMD Instinct MI250X")
    cfg = load_config(None, [f"output.runs_dir={tmp_path}", "system.precision=bf16"])
    env = {"SLURM_GPUS_ON_NODE": "1"}
    checks = {c.name: c for c in doctor.run_checks(cfg, env=env)}
    assert "ROCm" in checks["torch"].detail and all(c.ok for c in checks.values()), checks
    doctor.check_job(cfg, env=env)  # does not stop the job
    tf32 = {
        c.name: c for c in doctor.run_checks(cfg.replace({"system.precision": "tf32"}), env=env)
    }
    detail = tf32["precision"].detail
    assert not tf32["precision"].ok and "MI250X is an AMD GPU (ROCm)" in detail
    assert "no TF32" in detail
    assert detail.endswith("valid: fp32, fp32_strict, bf16")  # the registry's ROCm choices


# ---- discovery
# -------------------------------------------------------------------------------------------

def _outputs(shape: str) -> dict[str, str]:
    return {key: (SHAPES / shape / f"{key}.txt").read_text() for key in COMMANDS}


def test_discover_gh200_aarch64_with_typed_gres():
    text = discover(_outputs("gh200"), "gpu")
    p = validate(text, "gh200")
    assert (p.partition, p.arch, p.fabric, p.max_time_min, p.max_array_size) == (
        "gpu",
        "aarch64",
        "slingshot",
        2880,
        1001,
    )
    assert p.gpus["GH200"].gres_type == "nvidia_gh200_120gb" and p.gpus["GH200"].per_node == 4
    assert p.gpus["GH200"].cores_per_gpu(1) == 72 and p.account_required and p.account is None
    assert (
        "naiss2026-1-1-gpu" in text and "account: ${MMHPC_ACCOUNT}" in text
    )  # listed, never chosen
    assert "# detected" in text.replace(
        "  # detected", "# detected"
    ) and "# assumed" in text.replace("  # assumed", "# assumed")
    default = validate(discover(_outputs("gh200")), "gh200")  # the default partition: CPU nodes
    assert default.partition == "main" and not default.is_gpu and default.size == "tiny"


def test_discover_a100_thin_fat_by_features_without_partition():
    p = validate(discover(_outputs("a100_thin_fat")), "a100")
    assert p.partition is None and p.max_time_min == 3 * 1440
    assert {s.constraint for s in p.gpus.values()} == {"thin", "fat"}
    assert all(
        s.gres_type == "" and s.per_node == 8 and s.cores_per_gpu(1) == 16 for s in p.gpus.values()
    )


def test_discover_an_amd_gpu_partition():
    p = validate(discover(_outputs("amd"), "standard-g"), "amd")
    spec = p.gpus["MI250X"]
    assert (spec.vendor, spec.gres_type, p.exclusive, p.max_array_size) == (
        "amd",
        "mi250",
        True,
        300,
    )
    _, errors, _ = resolve_resources(p, load_config(None, ["system.precision=tf32"]), {})
    assert errors and "no TF32" in errors[0]
    assert "valid: fp32, fp32_strict, bf16 (or resources.gpu: MI250X)" in errors[0]
    with pytest.raises(
        ClusterError, match="--partition: invalid value 'gpu'; valid: small, standard-g"
    ):
        discover(_outputs("amd"), "gpu")


def test_discover_parsers():
    assert parse_gres("gpu:nvidia_gh200_120gb:4(S:0-3),shard:8") == [("nvidia_gh200_120gb", 4)]
    assert parse_gres("gpu:8(S:0-1)") == [(None, 8)] and parse_gres("(null)") == []
    assert [minutes(t) for t in ("3-00:00:00", "1-12", "2:00:00", "30:00", "30", "UNLIMITED")] == [
        4320, 2160, 120, 30, 30, None]
    probe = parse_probe("arch=aarch64\ngpu=NVIDIA GH200 120GB, 9.0\nscratch_var=TMPDIR\nhsn=hsn0\n")
    assert probe == {
        "arch": "aarch64",
        "gpu_name": "NVIDIA GH200 120GB",
        "capability": 9.0,
        "scratch": "TMPDIR",
        "fabric": "slingshot",
        "fabric_seen": "interface hsn0",
    }
    text = discover(
        _outputs("a100_thin_fat"),
        None,
        parse_probe("gpu=NVIDIA A100-SXM4-80GB, 8.0\nib=mlx5_0\nmodule=PyTorch/2.4.0\n"),
    )
    assert "fabric: infiniband  # detected: probe: /sys/class/infiniband/mlx5_0" in text
    assert "# PyTorch modules on a node (probe): PyTorch/2.4.0" in text


def test_a_profile_file_is_a_cluster(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(discover(_outputs("gh200"), "gpu"))
    p = load_profile(str(path), "naiss2026-1-1")
    assert p.ref == str(path) and p.name == "arrhenius-gpu" and p.job_account == "naiss2026-1-1"
    with pytest.raises(ClusterError, match="no profile file"):
        load_profile(str(tmp_path / "nope.yaml"))
    assert yaml.safe_load(path.read_text())["gpus"]["GH200"]["gres"] == "nvidia_gh200_120gb"


# ---- energy scope and AMD in the sampler
# ----------------------------------------------------------------

@pytest.fixture
def fake_nvml(monkeypatch):
    """NVML stubbed with one GPU of a given name, whose energy counter grows 1 J per read."""
    pynvml = pytest.importorskip("pynvml")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr("mmhpc.system.sampler._torch_uuids", lambda: None)
    energy = iter(range(0, 10 ** 9, 1000))
    name = {"value": "NVIDIA GH200 120GB"}
    stubs = {
        "nvmlInit": lambda: None,
        "nvmlShutdown": lambda: None,
        "nvmlDeviceGetCount": lambda: 1,
        "nvmlDeviceGetHandleByIndex": lambda i: "h0",
        "nvmlDeviceGetUUID": lambda h: "GPU-1",
        "nvmlDeviceGetHandleByUUID": lambda u: "h0",
        "nvmlDeviceGetName": lambda h: name["value"],
        "nvmlDeviceGetUtilizationRates": lambda h: type("U", (), {"gpu": 50})(),
        "nvmlDeviceGetMemoryInfo": lambda h: type("M", (), {"used": 2**30})(),
        "nvmlDeviceGetPowerUsage": lambda h: 300_000,
        "nvmlDeviceGetClockInfo": lambda h, c: 1980,
        "nvmlDeviceGetTotalEnergyConsumption": lambda h: next(energy),
    }
    for attr, fn in stubs.items():
        monkeypatch.setattr(pynvml, attr, fn)
    return name


@pytest.mark.parametrize("gpu, key", [("NVIDIA GH200 120GB", "gpu0_module_energy_j"),
                                      ("NVIDIA A100-SXM4-40GB", "gpu0_energy_j")])
def test_energy_of_a_grace_module_never_shares_a_column_with_a_gpus(fake_nvml, gpu, key, tmp_path):
    import json

    from mmhpc.system.sampler import UtilSampler

    fake_nvml["value"] = gpu
    s = UtilSampler(0.05).start(background=False)
    for _ in range(3):
        s.sample_now()
    s.stop()
    summary = s.summary()
    assert summary[key] and summary[key] > 0
    assert {"gpu0_energy_j", "gpu0_module_energy_j"} - {key} & set(summary) == set()
    meta = json.loads(s.save(tmp_path / "u.csv").with_suffix(".markers.json").read_text())
    assert meta["energy_scope"] == {"0": "module" if "GH200" in gpu else "gpu"}


def test_the_sampler_says_gpu_sampling_is_unavailable_on_rocm(monkeypatch):
    pynvml = pytest.importorskip("pynvml")
    import torch

    from mmhpc.system.sampler import UtilSampler

    def fail():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", fail)
    monkeypatch.setattr(torch.version, "hip", "6.2.41133", raising=False)
    s = UtilSampler(0.05).start(background=False)
    s.stop()
    assert not s.gpus and any("GPU sampling unavailable" in n and "ROCm" in n for n in s.notes)


@pytest.mark.slurm
@pytest.mark.slow
def test_a_profile_discovered_from_the_local_slurm_runs_the_parallelism_sweep_to_done(
    slurm, tmp_path
):
    """The acceptance line: `mmhpc clusters discover` on the local SLURM writes a profile, and
    `make sweep-parallelism CLUSTER=<that file>` runs on it to done."""
    env = {
        **slurm.env,
        "MMHPC_RESULTS": str(tmp_path / "r"),
        "MMHPC_DATA": os.environ["MMHPC_DATA"],
        "MMHPC_CLUSTERS": str(tmp_path / "none.yaml"),
    }
    profile = tmp_path / "local.yaml"
    mmhpc = [sys.executable, "-m", "mmhpc.cli"]
    run_ok(mmhpc + ["clusters", "discover", "-o", str(profile)], env, timeout=120)
    p = load_profile(str(profile))
    assert (p.partition, p.scheduler, p.is_gpu, p.size) == ("debug", "slurm", False, "tiny")
    assert "# detected" in profile.read_text() and "# assumed" in profile.read_text()
    probed = subprocess.run(
        mmhpc + ["clusters", "discover", "--probe"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )  # a 2-minute job on the node
    assert probed.returncode == 0, probed.stderr
    assert "arch: x86_64  # detected: probe: uname -m" in probed.stdout
    again = subprocess.run(
        mmhpc + ["clusters", "discover", "-o", str(profile)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        again.returncode == 2 and "exists" in again.stderr
    )  # an edited profile is never overwritten
    done = run_ok(["make", "-s", "sweep-parallelism", f"CLUSTER={profile}"], env, 600)
    assert f"submitted on {profile}" in done
    waited = subprocess.run(
        mmhpc + ["sweep", "wait", "-q", "--poll", "2", str(tmp_path / "r" / "parallelism")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert waited.returncode == 0, waited.stdout + waited.stderr
    states = [ln.split()[2] for ln in waited.stdout.splitlines() if ln.split()[1:2] and
              ln.split()[1].startswith("parallelism-")]
    assert sorted(states) == ["done", "done", "done", "n/a"], waited.stdout


def test_make_never_submits_with_a_venv_this_machine_cannot_run(tmp_path):
    """Arrhenius: the cluster venv is aarch64 (here: a file that cannot execute); the x86_64 login
    node submits with its own .venv instead, and does not wait."""
    venv = tmp_path / "aarch64-venv"
    (venv / "bin").mkdir(parents=True)
    foreign = venv / "bin" / "python"
    foreign.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 9 + b"\x02\x00\xb7\x00" + b"\0" * 44)
    foreign.chmod(0o755)
    env = {**os.environ, "MMHPC_ACCOUNT": "x", "MMHPC_VENV": str(venv)}
    plan = run_ok(["make", "-n", "sweep-parallelism", "CLUSTER=arrhenius"], env, 60)
    assert (
        ".venv/bin/python -m mmhpc.cli sweep submit sweeps/parallelism.yaml --cluster arrhenius"
        in plan
    )
    assert str(foreign) not in plan and "--wait" not in plan  # a cluster: submit and return


def test_install_cluster_without_a_torch_module_builds_on_a_gpu_node_of_the_profile(tmp_path):
    """No torch on the login node's python: one `srun` with one GPU of the profile (typed gres, the
    job account, its partition) runs the PyPI build (--pypi) there, checking the node's
    architecture."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "srun").write_text("#!/bin/sh\necho \"srun $*\"\n")
    (bindir / "srun").chmod(0o755)
    (bindir / "python3").write_text(
        "#!/bin/sh\nexit 1\n"
    )  # a python without torch (no site module)
    (bindir / "python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "MMHPC_ACCOUNT": "naiss2026-1-1",
           "LOGIN_PY": sys.executable}
    cmd = ["env/install-cluster.sh", "--cluster", "arrhenius", str(tmp_path / "venv")]
    line = run_ok(cmd, env, 120).strip()
    assert line.startswith(
        "srun --time=30 --nodes=1 --ntasks=1 --partition=gpu --account=naiss2026-1-1-gpu"
    )
    assert "--gpus-per-node=nvidia_gh200_120gb:1" in line and "--cpus-per-task=72" in line
    assert line.endswith(
        f"env/install-cluster.sh --pypi --arch aarch64 --cluster arrhenius {tmp_path}/venv"
    )
    no_account = {k: v for k, v in env.items() if k != "MMHPC_ACCOUNT"}
    refused = subprocess.run(
        cmd,
        cwd=REPO,
        env=no_account,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        refused.returncode == 2
        and "MMHPC_ACCOUNT" in refused.stderr
        and "srun" not in refused.stdout
    )


def test_jobs_on_nodes_of_another_architecture_need_their_own_interpreter(
    tmp_path, capsys, monkeypatch
):
    """Arrhenius from this x86_64 machine without MMHPC_VENV/MMHPC_APPTAINER: this interpreter
    cannot run on the GH200 nodes, so a dry run warns and a submission is refused (exit 2), nothing
    written."""
    from mmhpc.cli import main
    from mmhpc.doctor import node_arch

    assert node_arch() == "x86_64"
    monkeypatch.setenv("MMHPC_ACCOUNT", "naiss2026-1-1")
    sweep = str(REPO / "sweeps" / "batch.yaml")
    assert main(["sweep", "submit", sweep, "--cluster", "arrhenius", "--dry-run"]) == 0
    assert "nodes are aarch64, this machine is x86_64" in capsys.readouterr().err
    assert (
        main(["sweep", "submit", sweep, "--cluster", "arrhenius", "--results", str(tmp_path / "r")])
        == 2
    )
    assert "MMHPC_VENV" in capsys.readouterr().err and not (tmp_path / "r").exists()
    monkeypatch.setenv("MMHPC_VENV", "/proj/venv-aarch64")
    assert main(["sweep", "submit", sweep, "--cluster", "arrhenius", "--dry-run"]) == 0
    assert "this machine is x86_64" not in capsys.readouterr().err


def test_staging_says_so_when_the_scratch_variable_is_unset(tmp_path, caplog, monkeypatch):
    import logging

    from mmhpc.launch.submit import execute_run

    monkeypatch.delenv("MMHPC_NO_SCRATCH", raising=False)
    cfg = load_config(None, ["data.source=prepared", f"data.root={tmp_path / 'data'}",
                             f"output.runs_dir={tmp_path / 'runs'}"]).to_dict()
    with caplog.at_level(logging.WARNING, logger="mmhpc"), pytest.raises(Exception):
        execute_run(
            cfg, stage_data=True, scratch="MMHPC_NO_SCRATCH"
        )  # then fails: no dataset there
    assert any("$MMHPC_NO_SCRATCH (the profile's node-local scratch) is unset" in r.getMessage()
               for r in caplog.records)


def test_per_gpu_type_partitions_qos_exclusive_and_memory_per_gpu():
    """A Snellius-like profile: each GPU type in its own partition, a QOS, whole nodes, host memory
    per GPU."""
    from mmhpc.launch.clusters import profile_from_dict
    from mmhpc.launch.submit import slurm_parameters

    p = profile_from_dict(
        {
            "name": "snel",
            "scheduler": "slurm",
            "qos": "normal",
            "exclusive": True,
            "default_gpu": "A100",
            "gpus": {
                "A100": {
                    "capability": 8.0,
                    "partition": "gpu_a100",
                    "mem_gb_per_gpu": 120,
                    "nodes": [{"gpus": 4, "cores": 72}],
                },
                "H100": {
                    "capability": 9.0,
                    "partition": "gpu_h100",
                    "gres": "h100",
                    "nodes": [{"gpus": 4, "cores": 64}],
                },
            },
        }
    )
    a100, _, _ = resolve_resources(
        p, load_config(None, ["system.parallelism=ddp"]), {"gpu": "A100", "gpus": 2}
    )
    h100, _, _ = resolve_resources(p, load_config(None, []), {"gpu": "H100"})
    pa, ph = slurm_parameters(p, a100, "j"), slurm_parameters(p, h100, "j")
    assert (pa["partition"], ph["partition"]) == ("gpu_a100", "gpu_h100")
    assert (
        pa["qos"] == "normal"
        and pa["exclusive"] is True
        and pa["mem"] == "240G"
        and "mem" not in ph
    )
    assert pa["additional_parameters"]["gpus_per_node"] == "A100:2"
    assert ph["additional_parameters"]["gpus_per_node"] == "h100:1"
