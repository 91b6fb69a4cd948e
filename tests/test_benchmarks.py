"""The benchmark scripts, run as README runs them but on tiny sizes: each must
finish, write its table, and report gradients that agree with the reference.

(Nothing here is timed: the speed and memory targets live in the tables the
scripts write, not in tests.)
"""

import re
from pathlib import Path

import pytest
from _scripts import run_script

BENCH = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"


def _run(script: str, *args: str) -> str:
    return run_script(BENCH / script, *args)


def _table(text: str, header_start: str) -> list[list[str]]:
    """The rows of the markdown table whose header line starts with
    `header_start`, as lists of stripped cells."""
    lines = text.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[i + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def _float(cell: str) -> float:
    return float(re.match(r"[-+0-9.e]+", cell).group(0))


pytestmark = pytest.mark.slow


def test_bench_bptt(tmp_path):
    out = tmp_path / "bptt.md"
    _run(
        "bench_bptt.py",
        *("--sizes", "8", "--batch", "4", "--steps", "40", "--repeats", "3"),
        *("--out", str(out)),
    )
    text = out.read_text()
    rows = _table(text, "| n | batch | T | method |")
    methods = [r[3] for r in rows]
    assert methods == [
        "BPTT()",
        "jax.grad through lax.scan (Autodiff())",
        "BPTT(checkpoints=6)",
        "diffrax Euler + RecursiveCheckpointAdjoint",
    ]
    for r in rows:  # Δgrad against Autodiff, float32
        assert _float(r[8]) < 1e-4, r
        assert _float(r[4]) > 0, r  # a median time was measured
    (floor,) = _table(text, "| n | 3 × bare product (ms) |")
    assert floor[0] == "8" and _float(floor[1]) > 0


def test_bench_rtrl(tmp_path):
    _run(
        "bench_rtrl.py",
        *("--sizes", "8", "--T", "20", "--long-T", "200", "--repeats", "3"),
        *("--stream-n", "4", "--stream-steps", "200", "--chunk", "100"),
        *("--out", str(tmp_path)),
    )
    text = (tmp_path / "rtrl_cpu.md").read_text()
    (speed,) = _table(text, "| n | m | RTRL (ms) |")
    assert speed[0] == "8" and speed[1] == str(8 * 8 + 8 + 8)
    assert _float(speed[-1]) < 1e-4  # RTRL and RTRL(block) vs jax.jacfwd
    (memory,) = _table(text, "| n | RTRL temp, T=20 (MiB) |")
    assert memory[3] == "1.000"  # compiled temp memory independent of T
    (stream,) = _table(text, "| n | steps | chunk | µs/step |")
    assert stream[:3] == ["4", "200", "100"]


def test_bench_implicit(tmp_path):
    out = tmp_path / "implicit.md"
    _run(
        "bench_implicit.py",
        *("--sizes", "8", "--batch", "4", "--repeats", "2", "--budget", "5"),
        *("--out", str(out)),
    )
    rows = _table(out.read_text(), "| n | method |")
    methods = {r[1] for r in rows}
    assert {"implicit", "unrolled", "optimistix", "optimistix-joint"} <= methods
    for r in rows:  # float64 gradients against unrolled autodiff
        assert _float(r[10]) < 1e-8, r


def test_bench_lru(tmp_path):
    out = tmp_path / "lru.md"
    _run(
        "bench_lru.py",
        *("--T", "40", "--n", "4", "--m", "2", "--repeats", "1", "--out", str(out)),
    )
    rows = _table(out.read_text(), "| T | call | path |")
    assert [(r[1], r[2]) for r in rows] == [
        ("forward", "sequential (lax.scan)"),
        ("forward", "parallel (associative_scan)"),
        ("value_and_grad", "sequential (lax.scan)"),
        ("value_and_grad", "parallel (associative_scan)"),
    ]
    for r in rows:  # float32: the two paths agree to rounding
        assert _float(r[7]) < 1e-4 and _float(r[3]) > 0, r
