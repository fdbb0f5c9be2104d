"""`mmhpc gpu-check` on this CPU machine: with only what a bare system Python has (torch,
torchvision, transformers, nvidia-ml-py) it runs what it can, exits 0, says what each skipped check
lacks and lists the checks that need a GPU. (On a GPU node `make gpu-check` runs them all.)"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch

from mmhpc import gpucheck
from mmhpc.gpucheck import CHECKS, gpu_slug

REPO = Path(__file__).resolve().parents[1]
# what a bare system Python with torch, torchvision, transformers and nvidia-ml-py lacks
ABSENT = ("pandas", "matplotlib", "pydantic", "pydantic_core", "psutil", "submitit", "scipy")


def _bare_python_env(tmp_path) -> dict:
    """PYTHONPATH with packages that raise ImportError for ABSENT, then the repository (no
    install)."""
    stubs = tmp_path / "absent"
    for name in ABSENT:
        (stubs / name).mkdir(parents=True)
        (stubs / name / "__init__.py").write_text(
            f"raise ImportError('{name} is not installed here')\n"
        )
    return {**os.environ, "PYTHONPATH": f"{stubs}{os.pathsep}{REPO}", "CUDA_VISIBLE_DEVICES": ""}


def _run(tmp_path, *args, bare=True):
    out = tmp_path / "records"
    env = (
        _bare_python_env(tmp_path)
        if bare
        else {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    )
    proc = subprocess.run(
        [sys.executable, "-m", "mmhpc.gpucheck", "--out", str(out), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    status = {
        line.split()[1]: line.split()[0]
        for line in proc.stdout.splitlines()
        if line[:4] in ("PASS", "SKIP", "FAIL")
    }
    return proc, out, status


@pytest.mark.parametrize(
    "name, slug",
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA A100-SXM4-40GB", "a100"),
        ("NVIDIA A40", "a40"),
        ("Tesla V100-SXM2-32GB", "v100"),
        ("NVIDIA GeForce RTX 4090", "nvidia-geforce-rtx-4090"),
    ],
)
def test_gpu_slug(name, slug):
    assert gpu_slug(name) == slug


@pytest.mark.slow  # over 5 s: out of `make check`'s fast tier
def test_bare_python_on_a_cpu_runs_what_it_can_and_says_why(tmp_path):
    proc, out, status = _run(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list(status) == list(CHECKS)
    assert status["env"] == "PASS" and set(status.values()) == {"PASS", "SKIP"}
    # the trainer's checks say what they lack, and where to get it on a node without network
    assert "needs pydantic (not installed; make gpu-wheels fetches them" in proc.stdout
    assert "needs psutil, pandas (not installed; make gpu-wheels" in proc.stdout
    assert "skipped for want of a CUDA GPU: precision, syncs, ddp, bench, loader" in proc.stdout
    assert status["trainer"] == "SKIP"  # needs pydantic
    env = json.loads((out / "env.json").read_text())
    assert (
        env["status"] == "PASS"
        and env["cuda_available"] is False
        and env["torch"] == torch.__version__
    )
    assert env["packages"]["pandas"] is None  # really absent in that process
    summary = json.loads((out / "gpu-check.json").read_text())
    assert set(summary["checks"]) == set(CHECKS)
    assert not (out / "precision.json").exists()  # a skipped check writes no record


@pytest.mark.slow
def test_venv_on_a_cpu_runs_blp_and_lists_the_gpu_checks(tmp_path):
    proc, out, status = _run(tmp_path, bare=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (
        status["env"] == "PASS" and status["blp"] == "PASS"
    )  # BLP's gradient equality runs with branch threads
    assert (
        "skipped for want of a CUDA GPU: precision, syncs, sampler, ddp, bench, loader"
        in proc.stdout
    )
    assert json.loads((out / "blp.json").read_text())["max_relative_grad_diff"] <= 1e-4


@pytest.mark.slow
def test_bench_helpers_and_report_on_the_cpu(tmp_path):
    """The bench and loader checks' helpers (GPU-only in gpu-check), run here on tiny data on the
    CPU."""
    from mmhpc.gpucheck import Check, _bench, bench_loaders, check_report

    ck = Check(tmp_path, float("inf"), workers=1)
    cpu = ("system.device=cpu", "data.preset=tiny", "train.max_batches=2", "system.threads=1")
    rec = bench_loaders(ck, "cremad", *cpu, "data.modalities=[visual]", epochs=1)
    # the thesis' baseline: persistent workers (sweeps/loader.yaml), against Alg. 6's rebuilt ones
    assert rec["standard"]["persistent_workers"] and not rec["standard"]["preinit"]
    assert rec["preinit"]["preinit"] and not rec["preinit"]["persistent_workers"]
    assert rec["stall_ratio"] == pytest.approx(
        rec["preinit"]["stall_s"] / rec["standard"]["stall_s"]
    )
    assert rec["epoch_speedup"] == pytest.approx(
        rec["standard"]["epoch_s_mean"] / rec["preinit"]["epoch_s_mean"]
    )
    for p in ("fp32", "bf16"):
        assert _bench(ck, f"precision-cremad-audio-{p}", "cremad", *cpu, "data.modalities=[audio]",
                      f"system.precision={p}", "loader.persistent_workers=true")["train_s_mean"] > 0
    report, line = check_report(ck)
    assert report["tables"][:2] == ["precision", "loader"] and Path(report["pdf"]).exists()


def _wheel(
    house: Path, dist: str, version: str, module: str, source: str, requires=(), script=False
) -> Path:
    """A real (minimal) wheel, as pip download leaves them in .whl/ (`script`: with a console
    script, which a --target install records as ../../bin/...)."""
    path = house / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    needs = "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {
        f"{module}/__init__.py": source,
        **({f"{dist}-{version}.data/scripts/{module}-tool": "#!python\n"} if script else {}),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n{needs}",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


def test_missing_modules_come_from_the_wheelhouse_with_their_dependencies_but_numpy_stays(
    tmp_path, monkeypatch
):
    """What a fresh process cannot import is installed with its dependencies from the wheel set
    alone, which shadows the node's copies of them (pytest here), except numpy (torch was built
    against the node's)."""
    house = tmp_path / "whl"
    house.mkdir()
    _wheel(
        house,
        "mmhpc_wheel_probe",
        "1.0",
        "mmhpc_wheel_probe",
        "import pytest\nVALUE = pytest.SHADOW\n",
        requires=["pytest", "numpy"],
    )
    _wheel(house, "pytest", "0.1", "pytest", "SHADOW = 42\n")
    _wheel(
        house,
        "numpy",
        "0.1",
        "numpy",
        "raise ImportError('the node numpy was shadowed')\n",
        script=True,
    )
    monkeypatch.setattr(gpucheck, "WHEEL_MODULES", ("mmhpc_wheel_probe", "json"))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    (tmp / "keep").write_text("a file beside the wheel directory\n")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "elsewhere")
    installed, target = gpucheck.use_wheels(house)
    try:
        assert installed == [
            "mmhpc_wheel_probe-1.0",
            "pytest-0.1",
        ]  # json imports: nothing of it installed
        assert not (target / "numpy").exists() and not list(target.glob("numpy-*"))
        assert (
            tmp / "keep"
        ).exists() and target.parent == tmp  # removing numpy stayed inside the directory
        assert (
            os.environ["PYTHONPATH"] == f"{target}{os.pathsep}elsewhere"
        )  # the checks' processes see it
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import mmhpc_wheel_probe, numpy; print(mmhpc_wheel_probe.VALUE,"
                " numpy.__version__ != '0.1')",
            ],
            capture_output=True,
            text=True,
        )
        assert probe.stdout.split() == ["42", "True"], probe.stderr
    finally:
        shutil.rmtree(target, ignore_errors=True)
    monkeypatch.setattr(gpucheck, "WHEEL_MODULES", ("pytest",))
    assert gpucheck.use_wheels(house) == ([], None)  # nothing missing: pip is not even run


OLD_TYPING_EXTENSIONS = '''"""typing_extensions as a node's older torch stack brings it: the real
module without what releases after 4.12 added (Sentinel, which pydantic-core imports)."""
import importlib.util as _util

_spec = _util.spec_from_file_location("_real_typing_extensions", {real!r})
_real = _util.module_from_spec(_spec)
_spec.loader.exec_module(_real)
_left_out = ("Sentinel", "__name__", "__spec__")
globals().update({{k: v for k, v in vars(_real).items() if k not in _left_out}})
'''


@pytest.mark.slow
def test_wheels_route_runs_the_trainer_checks_on_a_bare_python_with_an_old_typing_extensions(
    tmp_path, request
):
    """A bare Python (no pydantic, pandas, psutil, ...) whose typing_extensions is older than
    pydantic's need, and the real wheel set of `make gpu-wheels`: the wheels are installed
    consistently (pydantic with the typing_extensions it needs, shadowing the node's) and the
    trainer's checks run."""
    import typing_extensions

    house = tmp_path / "whl"
    fetched = subprocess.run(
        [
            "make",
            "-s",
            "-C",
            str(REPO),
            "gpu-wheels",
            f"WHEELS_DIR={house}",
            f"PYTHON={sys.executable}",
            f"GPU_PYTHON_VERSION={sys.version_info.major}.{sys.version_info.minor}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert fetched.returncode == 0, fetched.stderr[-2000:]
    assert any(f.name.startswith("pydantic-") for f in house.glob("*.whl"))
    old = tmp_path / "old"
    old.mkdir()
    (old / "typing_extensions.py").write_text(
        OLD_TYPING_EXTENSIONS.format(real=typing_extensions.__file__)
    )
    env = _bare_python_env(tmp_path)
    env["PYTHONPATH"] = f"{old}{os.pathsep}{env['PYTHONPATH']}"
    # the run's wheel directory, removed after the test; short: loader workers put their Unix
    # sockets under TMPDIR too, and a test directory under a long clone path is too long for one
    short = tempfile.mkdtemp(prefix="mmhpc-gpucheck-", dir="/tmp")
    request.addfinalizer(lambda: shutil.rmtree(short, ignore_errors=True))
    env["TMPDIR"] = short
    probe = subprocess.run(
        [sys.executable, "-c", "import torch, pydantic_core"],
        env={**env, "PYTHONPATH": f"{old}{os.pathsep}{REPO}"},
        capture_output=True,
        text=True,
    )
    assert (
        "Sentinel" in probe.stderr
    )  # the simulated node: pydantic cannot import with its typing_extensions
    out = tmp_path / "records"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmhpc.gpucheck",
            "--out",
            str(out),
            "--wheels",
            str(house),
            "--only",
            "env",
            "--only",
            "blp",
            "--only",
            "trainer",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "gpu-check: installed from" in proc.stdout and "pydantic-2" in proc.stdout
    assert (
        "typing_extensions-4" in proc.stdout
        and "numpy" not in proc.stdout.split("installed from")[1].split("\n")[0]
    )
    status = {
        line.split()[1]: line.split()[0]
        for line in proc.stdout.splitlines()
        if line[:4] in ("PASS", "SKIP", "FAIL")
    }
    assert status == {"env": "PASS", "blp": "PASS", "trainer": "PASS"}, proc.stdout
    assert "not run for want of a second GPU: trainer: dp-2gpu, trainer: blp-2gpu" in proc.stdout
