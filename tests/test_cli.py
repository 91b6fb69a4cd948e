"""The `rnnode` command: help, list, `python -m rnnode`, errors (the commands that
need a trained run, eval, resume and analyse, are tested in test_train.py)."""

import subprocess
import sys
from pathlib import Path

import pytest

from rnnode.cli import main
from rnnode.train import builtin_configs

ROOT = Path(__file__).resolve().parents[1]


def test_help_for_newcomers(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in [
        "train",
        "eval",
        "resume",
        "list",
        "analyse",
        "examples:",
        "exit status",
    ]:
        assert word in out
    for command in ["train", "eval", "resume", "list", "analyse", "config"]:
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0
        assert "usage: rnnode " + command in capsys.readouterr().out


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: rnnode" in capsys.readouterr().out


def test_python_dash_m():
    proc = subprocess.run(
        [sys.executable, "-m", "rnnode", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage: rnnode" in proc.stdout


def test_list_shows_configs_and_tasks(capsys):
    from rnnode.data import list_tasks

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in builtin_configs():
        assert f"  {name} " in out
    for name, _ in list_tasks():
        assert f"  {name} " in out
    assert "frequency-to-sine with a small CTRNN" in out  # a config's description


def test_missing_run_is_a_clear_error(tmp_path, capsys):
    for command in (["eval"], ["resume"], ["analyse", "--what", "lyapunov"]):
        assert main([*command, str(tmp_path / "nope")]) == 1
        assert "is not an rnnode run (no config.yaml)" in capsys.readouterr().err
