"""Checkpoints: damage is found and named, never loaded and never overwritten; resume falls back
to the previous checkpoint and refuses a config that defines another model; a run directory is
never silently replaced; optimiser state is matched to parameters by name.

Damage is made the way disks and copies make it: bytes flipped with plain file writes at a
dataset's data offset (``h5py``'s ``dataset.id.get_offset()``), inside an attribute's value, at
spread-out offsets, and files cut short.
"""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch
import yaml
from helpers import write_yaml

import ddpinn.session
from ddpinn.cli import main
from ddpinn.parallel.comm import LocalComm
from ddpinn.train.checkpoint import (
    ArrayKey,
    CheckpointError,
    ParamGroup,
    load_checkpoint,
    restore,
    save_checkpoint,
)
from ddpinn.train.lbfgs import dot_by_name

# Adam steps with a checkpoint every 10, then L-BFGS: checkpoint.h5 is step 23 (Adam moments and
# L-BFGS pairs), checkpoint.prev.h5 step 20.
RUN = {
    "problem": {"name": "cos1d", "params": {"omega": 15.0}},
    "decomposition": {"levels": [{"subdomains": 8}], "overlap": 1.9},
    "network": {"hidden": [8]},
    "sampling": {"method": "grid", "n": 200, "test_n": 300},
    "train": {"steps": 20, "log_every": 5, "eval_every": 10, "checkpoint_every": 10, "compile": "off"},
    "lbfgs": {"steps": 3},
    "run": {"name": "run", "threads": 1, "plots": False, "dtype": "float64"},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished run directory (trained once per module; tests work on copies)."""
    base = tmp_path_factory.mktemp("trained")
    data = json.loads(json.dumps(RUN))
    data["run"]["output_dir"] = str(base / "runs")
    assert main(["train", str(write_yaml(base / "run.yaml", data)), "--quiet"]) == 0
    return base / "runs" / "run"


@pytest.fixture
def run_dir(trained, tmp_path):
    target = tmp_path / "runs" / "run"
    shutil.copytree(trained, target)
    return target


@pytest.fixture
def no_model_building(monkeypatch):
    """Fail the test if a model gets built: the checks under test must come first."""

    def build(*args, **kwargs):
        raise AssertionError("build_experiment was called before the run directory was checked")

    monkeypatch.setattr(ddpinn.session, "build_experiment", build)


def flip(path, offset: int, count: int = 64) -> None:
    """Invert ``count`` bytes of ``path`` from ``offset`` on, with plain file writes."""
    with open(path, "r+b") as fh:
        fh.seek(offset)
        data = bytearray(fh.read(count))
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in data))


def data_offset(path, key: str) -> tuple[int, int]:
    with h5py.File(path, "r") as f:
        return f[key].id.get_offset(), f[key].nbytes


def same_contents(a, b, with_config: bool = True) -> bool:
    """Two loaded checkpoints hold the same state, bit for bit (and the same config text)."""
    meta = ("step", "epoch", "phase", "world_size", "adam_step", "lbfgs_pairs") + (("config",) if with_config else ())
    return all(getattr(a, m) == getattr(b, m) for m in meta) and a.arrays.keys() == b.arrays.keys() and all(
        a.arrays[k].dtype == b.arrays[k].dtype and np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays
    )


# ----------------------------------------------------------------------------- damage is named
def test_the_run_keeps_the_previous_checkpoint(run_dir):
    latest, previous = load_checkpoint(run_dir / "checkpoint.h5"), load_checkpoint(run_dir / "checkpoint.prev.h5")
    assert (latest.step, latest.phase, latest.lbfgs_pairs) == (23, "lbfgs", 3)
    assert (previous.step, previous.phase, previous.lbfgs_pairs) == (20, "adam", 0)
    checkpoints = sorted(p.name for p in run_dir.iterdir() if "checkpoint" in p.name)
    assert checkpoints == ["checkpoint.h5", "checkpoint.prev.h5"]


@pytest.mark.parametrize("key", ["level_1/W0", "level_1/adam_v/b0", "level_1/lbfgs_y2/W1"])
def test_flipped_bytes_in_a_dataset_are_named(run_dir, key):
    """In a weight, in Adam's second moment, in an L-BFGS pair: HDF5 keeps no checksum of raw
    data, the stored SHA-256 finds it."""
    path = run_dir / "checkpoint.h5"
    offset, nbytes = data_offset(path, key)
    flip(path, offset + nbytes // 4, min(64, nbytes // 2))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and f"dataset {key} does not match its checksum" in str(err.value)


def test_flipped_bytes_in_the_stored_config_are_found(run_dir):
    path = run_dir / "checkpoint.h5"
    raw = path.read_bytes()
    offset = raw.index(b"log_every")  # inside the config attribute's value
    flip(path, offset, 4)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "damaged" in str(err.value)


@pytest.mark.parametrize("attribute, value", [("step", 21), ("config", "problem: {name: cos1d}"), ("phase", "adam")])
def test_a_rewritten_attribute_is_named(run_dir, attribute, value):
    """Rewritten through HDF5 itself (its own checksums then agree): the per-attribute digest
    still finds it."""
    path = run_dir / "checkpoint.h5"
    with h5py.File(path, "r+") as f:
        f.attrs[attribute] = value
    with pytest.raises(CheckpointError, match=f"attribute '{attribute}' does not match its checksum"):
        load_checkpoint(path)


@pytest.mark.parametrize("value, message", [
    ("ddpinn-checkpoint-1", "format 'ddpinn-checkpoint-1', expected 'ddpinn-checkpoint-2' (checkpoints of other"),
    ("ddp\udcd2nn-checkpoint-2", "is damaged or not a ddpinn checkpoint: attribute 'format' is 'ddp\\udcd2nn"),
])
def test_a_foreign_format_is_named(run_dir, value, message):
    path = run_dir / "checkpoint.h5"
    with h5py.File(path, "r+") as f:
        f.attrs["format"] = value.encode("utf-8", "surrogateescape")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert message in str(err.value)
    str(err.value).encode("ascii")  # printable on any terminal


def test_a_value_rewritten_in_place_is_named(run_dir):
    path = run_dir / "checkpoint.h5"
    with h5py.File(path, "r+") as f:
        f["level_1/b1"][3] += 1e-9
    with pytest.raises(CheckpointError, match="dataset level_1/b1 does not match its checksum"):
        load_checkpoint(path)


@pytest.mark.parametrize("keep", [0.5, 0.99, 100])
def test_a_truncated_file_is_a_clear_error(run_dir, keep):
    path = run_dir / "checkpoint.h5"
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(int(size * keep) if keep < 1 else keep)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "damaged or truncated" in str(err.value)


def test_flips_anywhere_in_the_file_are_found_or_change_nothing(run_dir, tmp_path):
    """One byte inverted at 40 spread-out offsets (HDF5 structure, attributes, data, free
    space): each is reported, or what loads is exactly the original. Most must be reported."""
    path = run_dir / "checkpoint.h5"
    original, raw = load_checkpoint(path), path.read_bytes()
    damaged = tmp_path / "damaged.h5"
    found = 0
    for offset in np.linspace(0, len(raw) - 1, 40).astype(int):
        damaged.write_bytes(raw)
        flip(damaged, int(offset), 1)
        try:
            loaded = load_checkpoint(damaged)
        except CheckpointError as err:
            assert str(damaged) in str(err)
            found += 1
            continue
        assert same_contents(loaded, original), f"flip at byte {offset} loaded different contents"
    assert found >= 30


def test_restore_checks_everything_before_changing_anything(run_dir):
    """A checkpoint that does not fit the second group leaves the first group's parameters as
    they were (never half-loaded)."""
    ckpt = load_checkpoint(run_dir / "checkpoint.h5")
    ids = np.arange(8)
    level_1 = [(leaf, torch.nn.Parameter(torch.zeros(ckpt.arrays[f"level_1/{leaf}"].shape, dtype=torch.float64)))
               for leaf in ("W0", "W1", "b0", "b1")]
    level_2 = [("W0", torch.nn.Parameter(torch.zeros(8, 8, 1, dtype=torch.float64)))]
    groups = [ParamGroup("level_1", ids, level_1, True), ParamGroup("level_2", ids, level_2, True)]
    with pytest.raises(CheckpointError, match="has no level_2/W0"):
        restore(ckpt, groups, None)
    assert all(not p.detach().any() for _, p in level_1)


# ----------------------------------------------------------------------------- resume and eval
def test_resume_falls_back_to_the_previous_checkpoint(run_dir, trained, capsys):
    """The latest checkpoint damaged: resume warns, continues from the previous one (step 20) and
    ends bitwise where the undamaged run ended; the damaged file is kept aside, not overwritten."""
    latest = run_dir / "checkpoint.h5"
    offset, nbytes = data_offset(latest, "level_1/adam_m/W0")
    flip(latest, offset, nbytes)
    damaged_bytes = latest.read_bytes()
    capsys.readouterr()

    assert main(["train", "--resume", str(run_dir)]) == 0
    captured = capsys.readouterr()
    assert f"warning: checkpoint {latest} is damaged: dataset level_1/adam_m/W0" in captured.err
    assert f"using the previous checkpoint {run_dir / 'checkpoint.prev.h5'} (step 20)" in captured.err
    assert "resumed from step 20 of checkpoint.prev.h5" in captured.out

    # (the configs differ only in the run directory)
    assert same_contents(load_checkpoint(latest), load_checkpoint(trained / "checkpoint.h5"), with_config=False)
    assert (run_dir / "checkpoint.damaged.h5").read_bytes() == damaged_bytes
    assert load_checkpoint(run_dir / "checkpoint.prev.h5").step == 20
    summary, reference = (json.loads((d / "summary.json").read_text()) for d in (run_dir, trained))
    assert summary["loss"] == reference["loss"] and summary["errors"] == reference["errors"]


def test_eval_uses_the_same_fallback(run_dir, capsys):
    flip(run_dir / "checkpoint.h5", run_dir.joinpath("checkpoint.h5").stat().st_size // 2)
    capsys.readouterr()
    assert main(["eval", str(run_dir)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["step"] == 20
    assert f"warning: checkpoint {run_dir / 'checkpoint.h5'} is damaged" in captured.err
    assert f"using the previous checkpoint {run_dir / 'checkpoint.prev.h5'} (step 20)" in captured.err


@pytest.mark.parametrize("command", ["train", "eval"])
def test_both_checkpoints_damaged_is_an_error_naming_both(run_dir, command, capsys, no_model_building):
    for name in ("checkpoint.h5", "checkpoint.prev.h5"):
        offset, nbytes = data_offset(run_dir / name, "level_1/W1")
        flip(run_dir / name, offset, nbytes)
    args = ["train", "--resume", str(run_dir)] if command == "train" else ["eval", str(run_dir)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {run_dir / 'checkpoint.h5'} is damaged: dataset level_1/W1" in err
    assert f"checkpoint {run_dir / 'checkpoint.prev.h5'} is damaged: dataset level_1/W1" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "override, listed",
    [
        ("decomposition.levels=[{subdomains: [20]}]", "decomposition.levels[0].subdomains: 8 -> [20]"),
        ("problem.params.omega=20", "problem.params.omega: 15.0 -> 20"),
        ("network.activation=sin", 'network.activation: "tanh" -> "sin"'),
        ("run.dtype=float32", 'run.dtype: "float64" -> "float32"'),
    ],
)
@pytest.mark.parametrize("command", ["train", "eval"])
def test_a_config_that_defines_another_model_is_refused(run_dir, command, override, listed, capsys, no_model_building):
    """Refused before any model building, the differing field listed as old -> new, and
    config.yaml and the checkpoints left exactly as they were."""
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    args = ["train", "--resume", str(run_dir)] if command == "train" else ["eval", str(run_dir)]
    assert main([*args, "--set", "network.hidden=[8]", "--set", override]) == 2
    err = capsys.readouterr().err
    assert "defines another model than the checkpoint" in err and f"\n  {listed}\n" in err
    assert err.count(" -> ") == 1  # network.hidden=[8] is no change
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_allowed_changes_on_resume_reach_config_yaml(small_run, tmp_path):
    """train.steps, the learning rate and logging may change; config.yaml and the checkpoint then
    say the same, and ``ddpinn eval`` reads them."""
    config = write_yaml(tmp_path / "run.yaml", small_run(train={"steps": 10}))
    run_dir = tmp_path / "runs" / "run"
    assert main(["train", str(config), "--quiet"]) == 0
    args = ["--set", "train.steps=16", "--set", "optimizer.lr=2e-3", "--set", "train.log_every=4"]
    assert main(["train", "--resume", str(run_dir), "--quiet", *args]) == 0
    assert json.loads((run_dir / "summary.json").read_text())["step"] == 16
    written = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert written["train"]["steps"] == 16 and written["optimizer"]["lr"] == 2e-3
    assert yaml.safe_load(load_checkpoint(run_dir / "checkpoint.h5").config) == written
    assert load_checkpoint(run_dir / "checkpoint.prev.h5").step == 10
    assert main(["eval", str(run_dir)]) == 0


# ----------------------------------------------------------------------------- run directories
def test_train_into_an_existing_run_is_refused_before_building(run_dir, tmp_path, capsys, no_model_building):
    data = json.loads(json.dumps(RUN))
    data["run"]["output_dir"] = str(run_dir.parent)
    config = write_yaml(tmp_path / "again.yaml", data)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert main(["train", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"run.name: {run_dir} already holds a run" in err
    assert f"--resume {run_dir}" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_overwrite_starts_the_run_again(run_dir, tmp_path):
    """--overwrite deletes what the old run wrote (checkpoints, metrics, ...) and nothing else."""
    data = json.loads(json.dumps(RUN))
    data["run"]["output_dir"] = str(run_dir.parent)
    data["train"] = {"steps": 6, "log_every": 3, "eval_every": 6, "compile": "off"}
    data["lbfgs"] = {"steps": 0}
    (run_dir / "notes.txt").write_text("mine")
    assert main(["train", str(write_yaml(tmp_path / "again.yaml", data)), "--quiet", "--overwrite"]) == 0
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "checkpoint.h5", "config.yaml", "metrics.jsonl", "notes.txt", "results.h5", "summary.json",
    ]
    assert load_checkpoint(run_dir / "checkpoint.h5").step == 6
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [3, 6]


@pytest.mark.parametrize("where", ["output_dir", "inside_output_dir", "run_dir"])
def test_an_output_dir_that_is_a_file_is_named_before_building(small_run, tmp_path, where, capsys, no_model_building):
    data = small_run()
    blocker = tmp_path / "taken"
    blocker.write_text("")
    data["run"]["output_dir"] = {"output_dir": str(blocker), "inside_output_dir": str(blocker / "runs"),
                                 "run_dir": str(tmp_path)}[where]
    if where == "run_dir":
        data["run"]["name"] = "taken"
    assert main(["train", str(write_yaml(tmp_path / "run.yaml", data)), "--quiet"]) == 2
    err = capsys.readouterr().err
    field = "run.name" if where == "run_dir" else "run.output_dir"
    assert err.startswith(f"ddpinn: error: {field}: cannot write the run to ") and f"{blocker} is a file" in err


# ----------------------------------------------------------------------------- state by name
def test_state_is_matched_to_parameters_by_name(run_dir, tmp_path):
    """Parameters listed in another order than they were saved in (and Adam built over a third
    order) get their own arrays, moments and L-BFGS pairs; saved back, the arrays are the same."""
    ckpt = load_checkpoint(run_dir / "checkpoint.h5")
    leaves = ["b1", "W0", "b0", "W1"]
    params = {leaf: torch.nn.Parameter(torch.zeros(ckpt.arrays[f"level_1/{leaf}"].shape, dtype=torch.float64))
              for leaf in leaves}
    group = ParamGroup("level_1", np.arange(8), [(leaf, params[leaf]) for leaf in leaves], True)
    adam = torch.optim.Adam([params[leaf] for leaf in sorted(leaves)])
    lbfgs = restore(ckpt, [group], adam)

    for leaf, p in params.items():
        name = f"level_1/{leaf}"
        np.testing.assert_array_equal(p.detach().numpy(), ckpt.arrays[name])
        np.testing.assert_array_equal(adam.state[p]["exp_avg_sq"].numpy(), ckpt.arrays[str(ArrayKey(name, "adam_v"))])
        for k, pair in enumerate(lbfgs.pairs):
            np.testing.assert_array_equal(pair.y[name].numpy(), ckpt.arrays[str(ArrayKey(name, f"lbfgs_y{k}"))])

    path = tmp_path / "again.h5"
    points = {k: v for k, v in ckpt.arrays.items() if k.startswith("points/")}
    save_checkpoint(path, groups=[group], comm=LocalComm(), step=ckpt.step, epoch=ckpt.epoch, phase=ckpt.phase,
                    config_yaml=ckpt.config, adam=adam, lbfgs=lbfgs, point_rows=points)
    again = load_checkpoint(path)
    assert again.adam_step == ckpt.adam_step and again.arrays.keys() == ckpt.arrays.keys()
    for key, value in ckpt.arrays.items():
        np.testing.assert_array_equal(again.arrays[key], value, err_msg=key)


def test_array_keys_name_the_parameter_and_the_state():
    assert ArrayKey.parse("level_2/adam_m/W1") == ArrayKey("level_2/W1", "adam_m")
    assert ArrayKey.parse("problem/mu") == ArrayKey("problem/mu")
    assert str(ArrayKey("problem/mu", "lbfgs_s3")) == "problem/lbfgs_s3/mu"


def test_dot_by_name_matches_tensors_by_identity():
    """A positional inner product (weights 1 and 10 by position) seen through names: the
    name-keyed vectors may list their entries in any order."""
    a, b = torch.ones(2), torch.ones(3)
    positional = lambda xs, ys: float((xs[0] * ys[0]).sum() + 10 * (xs[1] * ys[1]).sum())
    dot = dot_by_name(positional, [a, b], {"b": b, "a": a})
    u = {"b": torch.full((3,), 2.0), "a": torch.full((2,), 3.0)}
    assert dot(u, u) == 2 * 9 + 10 * 3 * 4


def test_a_checkpoint_from_before_a_new_model_field_still_resumes():
    """A config saved before ``network.fourier`` (and its siblings) existed has no such keys;
    they read as their defaults, so the same model is not refused, and a real change still is."""
    from ddpinn.config import load_config, to_dict
    from ddpinn.train.resume import model_changes

    current = to_dict(load_config(data={"problem": {"name": "cos1d"}, "network": {"hidden": [8]}}))
    saved = json.loads(json.dumps(current))
    del saved["network"]["fourier"], saved["network"]["adaptive_activation"], saved["problem"]["conditioned"]
    assert model_changes(saved, current) == []
    current["network"]["fourier"] = {"features": 4, "sigma": 1.0, "trainable": False}
    assert [c.field for c in model_changes(saved, current)] == [
        "network.fourier.features", "network.fourier.sigma", "network.fourier.trainable"
    ]
