"""The online board end to end on a tiny budget: the learning rate chosen on the
validation split by a sweep, the test metric scored once, the gradient of
exact RTRL aligned with autodiff's, and a second start resuming (running
nothing more)."""

import json

import pytest
import yaml
from _scripts import run_script


def test_online_board_tiny(tmp_path):
    out, results = tmp_path / "runs", tmp_path / "results"
    args = ("--budget", "tiny", "--out", str(out), "--results", str(results))
    text = run_script("experiments/online_board.py", *args)
    assert "| exact RTRL |" in text
    board = json.loads((results / "online_board_tiny.json").read_text())
    (r,) = board["board"]["henon"].values()
    assert r["status"] == "ok"
    # the learning rate of the trial with the lower *validation* NMSE won
    val = {}
    for trial in (out / "lr" / "henon__rtrl").glob("trial_*"):
        summary = json.loads((trial / "summary.json").read_text())
        lr = yaml.safe_load((trial / "config.yaml").read_text())["optim"]["lr"]
        val[lr] = summary["val"]["nmse"]
        assert summary["test"]["nmse"] != summary["val"]["nmse"]
    assert len(val) == 2 and r["lr"] == min(val, key=val.get)
    (m,) = r["measures"]
    seed_run = json.loads((tmp_path / m["run_dir"] / "summary.json").read_text())
    assert m["test"] == seed_run["test"]["nmse"]  # scored once, at the end
    assert m["cosine"] == pytest.approx(1.0, abs=1e-4)  # exact RTRL is exact
    assert m["cosine_W"] == pytest.approx(1.0, abs=1e-4)
    # RTRL's state holds the influence matrix: 4 units x 24 recurrent
    # parameters (W 4x4, U 4x1, b 4), float32
    assert 4 * 4 * 24 <= m["state_bytes"] < 4 * 4 * 24 + 100
    assert [s for s, _ in m["curve"]] == [10, 20]
    assert (results / "online_board_tiny.png").stat().st_size > 1000
    # started again, it resumes: every sweep is done, nothing more runs
    before = sorted(p.name for p in (out / "lr" / "henon__rtrl").iterdir())
    run_script("experiments/online_board.py", *args)
    assert sorted(p.name for p in (out / "lr" / "henon__rtrl").iterdir()) == before
