"""Every malformed sweep file and cluster profile under tests/bad_inputs/ is refused before anything
is written, with one `file: field: problem; valid: ...` line per problem (the file's `# expect:`
lines), and the command line exits 2 without a traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mmhpc.cli import main
from mmhpc.errors import ConfigError
from mmhpc.launch.clusters import load_profile
from mmhpc.sweep import plan_sweep

BAD = Path(__file__).parent / "bad_inputs"
REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((BAD / "sweeps").glob("*.yaml"))
PROFILES = sorted((BAD / "profiles").glob("*.yaml"))


def expected(path: Path) -> list[str]:
    return [line.split("# expect:", 1)[1].strip() for line in path.read_text().splitlines()
            if line.startswith("# expect:")]


@pytest.fixture(autouse=True)
def no_user_profiles(monkeypatch, tmp_path):
    for var in ("MMHPC_ACCOUNT", "MMHPC_RESULTS", "MMHPC_VENV", "MMHPC_PYTHON", "MMHPC_APPTAINER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MMHPC_CLUSTERS", str(tmp_path / "none.yaml"))


def check_problems(problems: list[str], path: Path) -> None:
    want = expected(path)
    assert want, f"{path.name} has no # expect: line"
    assert len(problems) == len(want), (path.name, problems)  # one message per problem
    for w in want:
        assert any(w in p for p in problems), (path.name, w, problems)
    assert all(p.startswith(f"{path}: ") for p in problems), (
        problems
    )  # every problem names the file


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_bad_sweep_files_list_every_problem(path):
    """Every problem in one round: the file's shape and, for what of it can be expanded, each run's
    config and resources (every line names the file; a run's lines name the run)."""
    with pytest.raises(ConfigError) as e:
        plan_sweep(path, load_profile("alvis", "NAISS1")).check()
    check_problems(e.value.problems, path)


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_bad_profiles_list_every_problem(path, monkeypatch):
    monkeypatch.setenv("MMHPC_CLUSTERS", str(path))
    with pytest.raises(ConfigError) as e:
        load_profile("bad")
    check_problems(e.value.problems, path)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_cli_refuses_bad_sweeps_with_exit_2_and_writes_nothing(path, tmp_path, capsys):
    results = tmp_path / "results"
    code = main(
        [
            "sweep",
            "submit",
            str(path),
            "--cluster",
            "alvis",
            "--account",
            "NAISS1",
            "--results",
            str(results),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and all(w in err for w in expected(path))
    assert not results.exists()


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_cli_refuses_bad_profiles_with_exit_2_and_writes_nothing(
    path, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("MMHPC_CLUSTERS", str(path))
    results = tmp_path / "results"
    code = main(
        [
            "sweep",
            "submit",
            str(REPO / "sweeps" / "batch.yaml"),
            "--cluster",
            "bad",
            "--results",
            str(results),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and all(w in err for w in expected(path))
    assert not results.exists()


def test_sweep_name_given_on_the_command_line_is_not_a_path(tmp_path, capsys):
    code = main(
        [
            "sweep",
            "submit",
            str(REPO / "sweeps" / "batch.yaml"),
            "--cluster",
            "none",
            "--name",
            "../outside",
            "--results",
            str(tmp_path / "r"),
        ]
    )
    assert code == 2
    assert "--name: '../outside' cannot name a directory" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (tmp_path / "outside").exists()


@pytest.mark.slow
def test_a_separate_process_exits_2_without_traceback(tmp_path):
    """The installed entry point, as a user runs it: a bad profile and a bad sweep."""
    for args, env in (
        (
            [
                "sweep",
                "submit",
                str(BAD / "sweeps" / "zero_and_negative.yaml"),
                "--cluster",
                "none",
            ],
            {},
        ),
        (["clusters", "bad"], {"MMHPC_CLUSTERS": str(BAD / "profiles" / "non_numeric.yaml")}),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "mmhpc.cli", *args, "--results", str(tmp_path / "r")]
            if args[0] == "sweep"
            else [sys.executable, "-m", "mmhpc.cli", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin", **env},
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and ": " in proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("kind", ["binary", "directory", "missing"])
def test_an_unreadable_input_file_is_one_line_naming_it_with_exit_2(
    kind, tmp_path, capsys, monkeypatch
):
    """A config, sweep or cluster file that is not UTF-8 text, is a directory or is missing: exit 2,
    no traceback, one line naming the file (each used to end in 'failed: UnicodeDecodeError' or
    'IsADirectoryError', exit 1, without the file's name)."""
    bad = tmp_path / "input.yaml"
    if kind == "binary":
        bad.write_bytes(b"name: \xff\xfe\x00")
    elif kind == "directory":
        bad.mkdir()
    results = tmp_path / "results"
    commands = [
        (["train", str(bad), "--print-config"], None),
        (["sweep", "submit", str(bad), "--cluster", "none", "--results", str(results)], None),
    ]
    if kind != "missing":  # a missing user cluster file means no user clusters
        commands.append(
            (
                ["sweep", "expand", str(REPO / "sweeps" / "batch.yaml"), "--cluster", "none"],
                str(bad),
            )
        )
    for argv, clusters in commands:
        monkeypatch.setenv("MMHPC_CLUSTERS", clusters or str(tmp_path / "none.yaml"))
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        assert "Traceback" not in err and f"{bad}: " in err, (argv, err)
    assert not results.exists()
