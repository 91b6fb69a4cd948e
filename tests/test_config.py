"""The config schema: validation messages, overrides, built-in configs."""

import filecmp
import math
from pathlib import Path

import pytest

from rnnode.cli import main
from rnnode.train import Config, ConfigError, builtin_configs, load_config
from rnnode.train.config import (
    apply_overrides,
    config_to_yaml,
    dump_config,
    parse_yaml,
    validate_config,
)

ROOT = Path(__file__).resolve().parents[1]


def test_builtin_configs_are_the_repository_configs():
    builtins = builtin_configs()
    assert "quickstart" in builtins
    user = {p.stem: p for p in (ROOT / "configs").glob("*.yaml")}
    assert set(user) == set(builtins), "configs/ and rnnode/configs/ must match"
    for name, path in builtins.items():
        assert filecmp.cmp(path, user[name], shallow=False), (
            f"configs/{name}.yaml differs from rnnode/configs/{name}.yaml"
        )


@pytest.mark.parametrize("name", sorted(builtin_configs()))
def test_builtin_configs_validate_and_round_trip(name):
    cfg = load_config(name)
    assert isinstance(cfg, Config)
    assert cfg.description
    again = validate_config(parse_yaml(config_to_yaml(cfg)))
    assert dump_config(again) == dump_config(cfg)


def test_overrides_are_yaml_scalars():
    cfg = load_config(
        None,
        [
            "optim.lr=1e-3",
            "model.hidden_size=128",
            "train.online=false",
            "optim.schedule=cosine",
            "optim.schedule.end_factor=0.1",
            "task.options.frequency_range=[1.0, 2.0]",
            "out_dir=somewhere/else",
        ],
    )
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.model.hidden_size == 128
    assert cfg.optim.schedule.name == "cosine"
    assert cfg.optim.schedule.end_factor == 0.1
    assert tuple(cfg.task.options["frequency_range"]) == (1.0, 2.0)
    assert cfg.out_dir == "somewhere/else"


def test_yaml_reads_exponents_and_nan_as_floats():
    raw = parse_yaml("a: 1e-3\nb: 2E5\nc: nan\nd: -inf\ne: 3\nf: 1.5")
    assert raw["a"] == 1e-3 and raw["b"] == 2e5 and raw["e"] == 3
    assert math.isnan(raw["c"]) and raw["d"] == -math.inf


def test_apply_overrides_creates_nested_keys():
    raw = apply_overrides({"task": {"name": "sine"}}, ["model.integrator.dt=0.05"])
    assert raw["model"] == {"integrator": {"dt": 0.05}}


def test_defaults_fill_in_and_out_dir_from_the_config_name():
    cfg = validate_config({"task": {"name": "sine"}}, name="mine")
    assert cfg.model.dynamics == "ctrnn"
    assert cfg.model.integrator is not None and cfg.model.integrator.name == "euler"
    assert cfg.gradient.name == "autodiff" and cfg.optim.name == "adam"
    assert cfg.out_dir == str(Path("runs") / "mine")
    cell = validate_config({"task": {"name": "adding"}, "model": {"dynamics": "lstm"}})
    assert cell.model.integrator is None


def test_gradient_and_optimiser_options_sit_beside_their_names():
    cfg = validate_config(
        {
            "task": {"name": "sine"},
            "gradient": {"name": "bptt", "truncate": 10},
            "optim": {"name": "adamw", "lr": 0.01, "weight_decay": 1e-4},
        }
    )
    assert cfg.gradient.options == {"truncate": 10}
    assert cfg.optim.options == {"weight_decay": 1e-4}


# Each bad config: its overrides of the quickstart and the exact error line.
BAD = [
    (
        ["model.hiden_size=3"],
        "model.hiden_size: unknown key (did you mean hidden_size?)",
    ),
    (["model.hidden_size=abc"], "model.hidden_size: must be an integer, got 'abc'"),
    (["model.hidden_size=-4"], "model.hidden_size: must be > 0, got -4"),
    (["model.integrator.dt=-0.1"], "model.integrator.dt: must be > 0, got -0.1"),
    (["model.integrator.dt=0"], "model.integrator.dt: must be > 0, got 0"),
    (["optim.lr=nan"], "optim.lr: must be a finite number, got nan"),
    (["optim.lr=.inf"], "optim.lr: must be a finite number, got inf"),
    (["train.steps=0"], "train.steps: must be > 0, got 0"),
    (["train.online=maybe"], "train.online: must be true or false, got 'maybe'"),
    (
        ["model.integrator.name=midpoint"],
        "model.integrator.name: must be one of 'euler', 'heun', 'rk4' or 'diffrax', "
        "got 'midpoint'",
    ),
    (
        ["model.dynamics=lstm"],
        "model.integrator: lstm is a discrete-time cell and is stepped directly",
    ),
    (
        ["gradient.name=implicit"],
        "gradient.name: implicit gradients need a task with an equilibrium; sine is "
        "a sequence task",
    ),
    (
        ["train.online=true"],
        "train.online: online training updates the weights at every time step and "
        "needs an online gradient.name (rtrl, snap, uoro, kf_rtrl, rflo, eprop, "
        "layer_local), got "
        "autodiff",
    ),
    (
        ["task.name=steady_state", "gradient.name=bptt"],
        "gradient.name: bptt differentiates a sequence; task steady_state is an "
        "equilibrium task",
    ),
    (
        ["equilibrium.max_steps=10"],
        "equilibrium: only used by equilibrium tasks; sine is a sequence task",
    ),
    (
        ["task.name=steady_state", "gradient.name=implicit", "equilibrium.memory=3"],
        "equilibrium.memory: only used by anderson, not fixed_point",
    ),
    (
        ["task.name=steady_state", "gradient.name=implicit", "equilibrium.damping=0"],
        "equilibrium.damping: must be > 0, got 0",
    ),
    (
        ["gradient.name=rtrl", "gradient.block=0"],
        "gradient.block: rtrl: `RTRL(block=0)`",
    ),
    (["model.density=0"], "model.density: must be > 0, got 0"),
    (["model.density=1.5"], "model.density: must be <= 1, got 1.5"),
    (["model.density=dense"], "model.density: must be a number, got 'dense'"),
    (
        ["model.form=voltage"],
        "model.form: must be one of 'current' or 'rate', got 'voltage'",
    ),
    (
        ["adding", "model.density=0.5"],
        "model.density: only used by ctrnn and elman dynamics, not lstm",
    ),
    (
        ["adding", "model.form=rate"],
        "model.form: only used by ctrnn dynamics, not lstm",
    ),
    (["model.options.density=0.5"], "model.options.density: unknown option for ctrnn"),
    (
        ["gradient.name=rtlr"],
        "gradient.name: must be one of 'autodiff', 'bptt', 'rtrl', 'implicit', "
        "'deer', 'elk', 'snap', 'uoro', 'kf_rtrl', 'rflo', 'eprop' or 'layer_local', "
        "got 'rtlr'",
    ),
    (
        ["gradient.name=deer", "gradient.damping=2"],
        "gradient.damping: deer: `DEER(damping=2)` must be a number in [0, 1]",
    ),
    (
        ["gradient.name=elk", "gradient.penalty=-1"],
        "gradient.penalty: elk: `ELK(penalty=-1)` must be a finite number >= 0",
    ),
    (
        ["gradient.name=deer", "gradient.max_steps=0"],
        "gradient.max_steps: deer: `DEER(max_steps=0)` must be None",
    ),
    (
        ["task.name=steady_state", "gradient.name=uoro"],
        "gradient.name: uoro differentiates a sequence; task steady_state is an "
        "equilibrium task",
    ),
    # a method on a model it does not cover: asked once the model is built
    (
        ["gradient.name=rtrl", "gradient.structured=true", "model.integrator.name=rk4"],
        "gradient.name: rtrl does not cover this model (ctrnn): "
        "`RTRL(structured=True)`: no structured Jacobian for `CTRNN` with `RK4`",
    ),
    (
        ["adding", "gradient.name=kf_rtrl", "train.online=true"],
        "gradient.name: kf_rtrl does not cover this model (lstm): `KFRTRL` is defined "
        "for `ElmanRNN` and `CTRNN` with `Euler`; got `LSTM`.",
    ),
    (
        ["gradient.name=snap", "gradient.order=0"],
        "gradient.order: snap: `SnAp(order=0)`",
    ),
    (
        ["gradient.name=rflo", "gradient.feedback=sideways"],
        "gradient.feedback: rflo: `RFLO(feedback='sideways')`",
    ),
    (
        ["gradient.name=uoro", "gradient.sead=1"],
        "gradient.sead: unknown option for uoro",
    ),
    (["task.options.num_stepz=3"], "task.options.num_stepz: unknown key"),
    (["task.options.num_steps=2.5"], "task.options.num_steps: must be an integer"),
    (["task.name=sinus"], "task.name: unknown task 'sinus' (did you mean sine?)"),
    (["optim.name=adamx"], "optim.name: unknown optax optimiser 'adamx'"),
    (["optim.betas=1"], "optim.betas: unknown option for optax.adam"),
    (["model.options.gainn=2"], "model.options.gainn: unknown option for ctrnn"),
    (
        ["model.integrator.solver=dopri5"],
        "model.integrator.solver: only used by the diffrax integrator, not euler",
    ),
    (
        ["model.readout=none"],
        "model.readout: none outputs the 32 observed state values, but task sine "
        "has 1 output",
    ),
    (["devices=0"], "devices: must be 'all' or a positive integer, got 0"),
    (["just-a-word=", "oops"], "argument 'oops': expected KEY=VALUE"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[b[1][:40] for b in BAD])
def test_bad_config_one_line_exit_2_nothing_written(
    overrides, message, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    rc = main(["train", *overrides])
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rnnode: error: " + message), err
    assert list(tmp_path.iterdir()) == [], "nothing may be written"


def test_unknown_top_level_key_and_bad_yaml(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("task: {name: sine}\nmodle: {}\n")
    assert main(["train", str(cfg)]) == 2
    assert "modle: unknown key (did you mean model?)" in capsys.readouterr().err
    cfg.write_text("task: {name: sine\n")
    assert main(["train", str(cfg)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["train", "no_such_config"]) == 2
    assert "no built-in config" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_unreadable_config_file_one_line_exit_2(tmp_path, monkeypatch, capsys):
    """A binary file, a directory, a file without read permission, and a run
    whose config.yaml is binary: one line and exit 2, never a traceback."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bin.yaml").write_bytes(b"task:\x89PNG\r\n\x1a\n\xff\x00")
    (tmp_path / "dir.yaml").mkdir()
    (tmp_path / "locked.yaml").write_text("task: {name: sine}\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_bytes(b"\xfe\xfe")
    real = Path.read_bytes

    def read_bytes(self):  # running as root, chmod 000 would not stop the read
        if self.name == "locked.yaml":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    cases = [
        (
            ["train", "bin.yaml"],
            "config: 'bin.yaml' is not a text file (byte 0x89 at offset 5 is not "
            "UTF-8); a config is a YAML file",
        ),
        (["train", "dir.yaml"], "config: 'dir.yaml' is a directory, not a config"),
        (["config", "."], "config: '.' is a directory, not a config"),
        (["train", "locked.yaml"], "config: cannot read 'locked.yaml': Permission"),
        (["eval", "run"], "config: 'run/config.yaml' is not a text file (byte 0xfe"),
        (["resume", "run"], "config: 'run/config.yaml' is not a text file"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith("rnnode: error: " + message), err


@pytest.mark.parametrize(
    ("override", "path", "value"),
    [
        ("out_dir=2024", "out_dir", "2024"),
        ("out_dir=nan", "out_dir", "nan"),
        ("out_dir=[x", "out_dir", "[x"),
        ("out_dir=null", "out_dir", str(Path("runs") / "sine")),  # the default
        ("description=yes", "description", "yes"),
        ("description=null", "description", "null"),  # not optional: text
        ("optim.lr=2e-3", "optim.lr", 2e-3),  # other fields: YAML scalars
        ("train.online=false", "train.online", False),
        ("model.integrator.dt=0.05", "model.integrator.dt", 0.05),
    ],
)
def test_override_reads_its_value_with_the_field_type(override, path, value):
    cfg = load_config("sine", [override])
    got = cfg
    for part in path.split("."):
        got = getattr(got, part)
    assert got == value and type(got) is type(value)


def test_null_switches_an_optional_section_off():
    """`optim.schedule=null` and `schedule: null` both mean no schedule (the
    constant learning rate), like deleting the lines."""
    plain = validate_config({"task": {"name": "sine"}})
    assert plain.optim.schedule.name == "constant"
    sine = load_config("sine")
    assert sine.optim.schedule.name == "cosine"  # the file sets one
    off = load_config("sine", ["optim.schedule=null"])
    assert off.optim.schedule == plain.optim.schedule
    assert not off.optim.explicit("schedule")
    raw = parse_yaml(
        "task: {name: sine}\noptim: {lr: 0.01, schedule: null}\n"
        "equilibrium: null\nloss: null\n"
    )
    cfg = validate_config(raw)
    assert cfg.optim.schedule == plain.optim.schedule and cfg.optim.lr == 0.01
    assert cfg.loss == plain.loss
    # a sequence task refuses an explicit `equilibrium:` section, but not a null one
    assert not cfg.explicit("equilibrium")
    with pytest.raises(ConfigError, match="^task: must be a mapping, got null$"):
        load_config("sine", ["task=null"])


def test_config_error_lists_every_problem():
    with pytest.raises(ConfigError) as info:
        validate_config(
            {"task": {"name": "sine"}, "optim": {"lr": -1.0}, "train": {"steps": 0}}
        )
    assert info.value.errors == [
        "optim.lr: must be > 0, got -1",
        "train.steps: must be > 0, got 0",
    ]


def test_config_command_prints_resolved_yaml(capsys):
    assert main(["config", "sine", "optim.lr=0.002"]) == 0
    out = capsys.readouterr().out
    raw = parse_yaml(out)
    assert raw["optim"]["lr"] == 0.002 and raw["task"]["name"] == "sine"
