"""Gradient quality as an instrument (`rnnode.analysis.gradient_alignment`, `rnnode
analyse --what alignment`), the Add task's online config, and the online study and
benchmark scripts run on tiny sizes (nothing here is timed)."""

import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from _scripts import run_script

import rnnode as rn
from rnnode import analysis as an
from rnnode.cli import main
from rnnode.train import load_config, train

ROOT = Path(__file__).resolve().parents[1]


def _problem(*, T=15, B=4):
    k = iter(jr.split(jr.PRNGKey(7), 5))
    model = rn.Model(
        rn.ElmanRNN(5, 3, key=next(k)), readout=rn.Linear(5, 2, key=next(k))
    )
    xs = jr.normal(next(k), (T, B, 3))
    ys = jr.normal(next(k), (T, B, 2))
    weights = jr.uniform(next(k), (T, B))  # per-sequence time weights
    return model, xs, ys, weights


class Unsupported(rn.AbstractGradient):
    """A method that does not apply to any model."""

    def loss(self, *, step, loss, params, h0, inputs, targets, weights):
        raise ValueError("`Unsupported` does not apply to this model\nmore")


@pytest.fixture(scope="module")
def aligned():
    model, xs, ys, weights = _problem()
    methods = [rn.RTRL(), rn.BPTT(), rn.BPTT(truncate=1), Unsupported()]
    result = an.gradient_alignment(
        model, xs, ys, methods, weights=weights, on_error="skip"
    )
    return result, (model, xs, ys, weights)


def _truncated_gradients(model, xs, ys, weights):
    """Per sequence, the gradient that `BPTT(truncate=1)` should give, written
    out directly: each step's loss reaches back through its own step only (the
    state entering it is a constant)."""
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def one(x, y, w):
        def f(p):
            m = eqx.combine(p, static)
            hs, _ = model.rollout(x)  # the states, computed without gradient
            h_prev = jnp.concatenate([m.init_state()[None], hs[:-1]])
            inputs = model.step_inputs(x)
            h_new = jax.vmap(lambda h, *inp: m.step(jax.lax.stop_gradient(h), *inp))(
                h_prev, *inputs
            )
            outs = jax.vmap(m.output)(h_new)
            return jnp.sum(w * jax.vmap(rn.mse)(outs, y))

        return jax.grad(f)(params)

    return jax.vmap(one, in_axes=(1, 1, 1))(xs, ys, weights)


def test_exact_methods_align_perfectly(aligned):
    result, _ = aligned
    assert result.methods == ("RTRL", "BPTT", "BPTT(truncate=1)")
    assert result.reference == "Autodiff"
    assert result.groups == (
        "dynamics.W",
        "dynamics.U",
        "dynamics.b",
        "readout.weight",
        "readout.bias",
        "all",
    )
    for a in (result.cosine, result.norm_ratio, result.batch_cosine):
        np.testing.assert_allclose(a[:2], 1.0, atol=1e-10)
    np.testing.assert_allclose(result.batch_norm_ratio[:2], 1.0, atol=1e-10)
    assert result.num_sequences == 4 and result.num_steps == 15


def test_truncated_bptt_against_a_direct_computation(aligned):
    result, (model, xs, ys, weights) = aligned
    i = result.methods.index("BPTT(truncate=1)")
    direct = _truncated_gradients(model, xs, ys, weights)
    exact = jax.vmap(
        lambda x, y, w: eqx.filter_grad(lambda m: rn.sequence_loss(m, x, y, weights=w))(
            model
        ),
        in_axes=(1, 1, 1),
    )(xs, ys, weights)
    exact = eqx.filter(exact, eqx.is_inexact_array)

    def rows(tree):
        leaves = jax.tree.leaves(tree)
        per = [np.asarray(g).reshape(4, -1) for g in leaves]
        return per + [np.concatenate(per, axis=1)]

    for j, (a, b) in enumerate(zip(rows(direct), rows(exact), strict=True)):
        cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        ratio = np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert result.cosine[i, j] == pytest.approx(cos.mean(), abs=1e-10)
        assert result.norm_ratio[i, j] == pytest.approx(ratio.mean(), abs=1e-10)
        a, b = a.mean(0), b.mean(0)
        batch = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
        assert result.batch_cosine[i, j] == pytest.approx(batch, abs=1e-10)
    j = result.groups.index("dynamics.W")
    assert 0.3 < result.cosine[i, j] < 0.999  # the truncation really matters here
    # the readout's gradient needs no history: exact under any truncation
    j = result.groups.index("readout.weight")
    assert result.cosine[i, j] == pytest.approx(1.0, abs=1e-12)


def test_result_prints_saves_and_plots(aligned, tmp_path):
    result, (model, xs, ys, _) = aligned
    # a method that does not apply is skipped with its message's first line
    assert result.skipped == {
        "Unsupported": "`Unsupported` does not apply to this model"
    }
    assert "| Unsupported | not applicable: `Unsupported` does not" in str(result)
    assert "| RTRL | 1.0000 | 1.0000 | 1.0000 | 1.0000 |" in result.table()
    result.save(tmp_path / "a.json")
    data = json.loads((tmp_path / "a.json").read_text())
    assert data["methods"]["BPTT"]["all"]["cosine"] == pytest.approx(1.0)
    again = an.GradientAlignment.from_dict(data)
    np.testing.assert_array_equal(again.cosine, result.cosine)
    np.testing.assert_array_equal(again.batch_norm_ratio, result.batch_norm_ratio)
    assert again.skipped == result.skipped and again.groups == result.groups
    an.plot_alignment(result, tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="does not apply"):
        an.gradient_alignment(model, xs, ys, [Unsupported()])


def test_errors():
    model, xs, ys, _ = _problem(T=4, B=1)
    with pytest.raises(ValueError, match="lists `BPTT` twice"):
        an.gradient_alignment(model, xs, ys, [rn.BPTT(), rn.BPTT()])
    with pytest.raises(ValueError, match=r"`methods\['x'\]` must be a gradient"):
        an.gradient_alignment(model, xs, ys, {"x": "bptt"})
    with pytest.raises(ValueError, match="`methods` must be a dict"):
        an.gradient_alignment(model, xs, ys, rn.BPTT())
    with pytest.raises(ValueError, match="`on_error`"):
        an.gradient_alignment(model, xs, ys, [], on_error="ignore")
    with pytest.raises(ValueError, match="needs targets"):
        an.run_analysis(model, xs, what="alignment", out_dir="unused")


def _tiny_add_run(tmp_path):
    cfg = load_config(
        "add_online",
        [
            "task.options.num_steps=30",
            "task.options.num_test=2",
            "model.hidden_size=6",
            "train.steps=20",
            "train.eval_every=20",
            "train.checkpoint_every=20",
            "train.steps_per_call=10",
            f"out_dir={tmp_path / 'add'}",
        ],
    )
    assert cfg.train.online and cfg.task.name == "add"
    summary = train(cfg, progress=False)
    assert summary["status"] == "finished"
    return tmp_path / "add"


def test_analyse_alignment_of_a_run(tmp_path, capsys, monkeypatch):
    run = _tiny_add_run(tmp_path)
    # every method that applies (each is tested in its own file): three here
    everything = an.alignment_methods()
    assert {"RTRL", "SnAp-1", "SnAp-2", "UORO", "KF-RTRL", "RFLO", "e-prop"} <= set(
        everything
    )
    subset = {k: everything[k] for k in ("RTRL", "BPTT(truncate=1)", "e-prop")}
    monkeypatch.setattr("rnnode.analysis._run.alignment_methods", lambda: subset)
    assert main(["analyse", str(run), "--what", "alignment"]) == 0
    out = capsys.readouterr().out
    assert "gradient alignment against Autodiff (2 sequence(s) of 30 steps)" in out
    data = json.loads((run / "analysis" / "alignment.json").read_text())
    assert data["what"] == "alignment" and data["num_sequences"] == 2
    assert data["methods"]["RTRL"]["all"]["cosine"] == pytest.approx(1.0, abs=1e-5)
    truncated = data["methods"]["BPTT(truncate=1)"]["all"]["cosine"]
    assert truncated < 0.999
    # e-prop on an Elman network drops every W-mediated term: truncation to 1
    eprop = data["methods"]["e-prop"]["all"]["cosine"]
    assert eprop == pytest.approx(truncated, abs=1e-5)
    assert (run / "analysis" / "alignment.png").stat().st_size > 1000


def test_compare_onlinerun_script(tmp_path):
    out = run_script(
        "experiments/compare_online.py",
        *("--steps", "60", "--hidden", "4", "--chunk", "30", "--truncate", "5"),
        *("--methods", "RTRL,SnAp-1,TBPTT", "--out", str(tmp_path)),
    )
    assert "Floors: nothing 0.662, first 0.519, both 0.454 nats." in out
    rows = _table((tmp_path / "compare_online.md").read_text(), "| method |")
    assert [r[0] for r in rows] == ["RTRL", "SnAp-1", "TBPTT(5)"]
    for r in rows:
        assert 0.3 < float(r[1]) < 1.5 and float(r[4]) > 0, r  # CE, steps/s
    # the trace of exact RTRL is n × m numbers; SnAp-1's one per parameter
    state = {r[0]: float(r[6]) for r in rows}
    assert state["RTRL"] > 4 * state["SnAp-1"]
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["floors"]["floor_both"] == pytest.approx(0.4545, abs=1e-4)
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_bench_onlinerun_script(tmp_path):
    run_script(
        "experiments/benchmarks/bench_online.py",
        *("--sizes", "4", "8", "--densities", "1", "0.5", "--chunk", "3"),
        *("--methods", "RTRL", "SnAp-2", "--repeats", "3", "--budget", "0.5"),
        *("--max-state-mib", "0.002", "--out", str(tmp_path)),
    )
    text = (tmp_path / "online_cpu.md").read_text()
    rows = _table(text, "| density | n | method |")
    names = ["forward + readout grad", "RTRL", "SnAp-2"]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (d, n, name) for d in ("1", "0.5") for n in ("4", "8") for name in names
    ]
    for r in rows:
        assert float(r[5]) > 0, r  # compiled memory
    state = {(r[0], r[1], r[2]): r for r in rows}
    # RTRL's trace at n = 8, 8 × (64 + 16 + 8) float32 numbers, is over the
    # 2 KiB limit: compiled, not run; at n = 4 it runs
    rtrl = state["1", "8", "RTRL"]
    assert rtrl[3].startswith("not run (state") and float(rtrl[6]) == 2.8
    assert float(state["1", "4", "RTRL"][3].split()[0]) > 0
    # SnAp-2 keeps fewer numbers on the sparse network than on the dense one
    assert float(state["0.5", "4", "SnAp-2"][6]) < float(state["1", "4", "SnAp-2"][6])
    (target,) = _table(text, "| target |")
    assert target[0] == "SnAp-2 (density 0.5) ≥ 10× faster than RTRL"
    assert target[1].endswith("at n = 8") or target[1] == "not measured"


def _table(text, header_start):
    lines = text.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[i + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows
