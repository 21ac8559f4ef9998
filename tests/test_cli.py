"""The ``ddpinn`` command line: train writes a complete run directory, eval reproduces its final
errors from the checkpoint, plot redraws the figures (1-D, 2-D and 3-D problems)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import yaml
from helpers import write_yaml

from ddpinn.build import build_experiment
from ddpinn.cli import main
from ddpinn.config import load_config, to_dict
from ddpinn.io.outputs import read_metrics
from ddpinn.problems import problem_class, registered

RUNS = {
    "cos1d": ({"name": "cos1d"}, {"levels": [{"subdomains": 6}]}, {"n": 100, "test_n": 120}, (120,)),
    "poisson2d": ({"name": "poisson2d", "params": {"frequencies": [1, 2]}}, {"levels": 2}, {"n": [10, 10], "test_n": [12, 9]}, (12, 9)),
    "heat2d_ms": ({"name": "heat2d_ms"}, {"levels": 2}, {"n": 120, "test_n": [6, 5, 4]}, (6, 5, 4)),
}
PLOTS = ["curves.png", "decomposition.png", "solution.png"]


@pytest.mark.parametrize("name", sorted(RUNS))
def test_train_eval_plot(name, tmp_path, capsys):
    problem, decomposition, sampling, test_shape = RUNS[name]
    data = {
        "problem": problem,
        "decomposition": decomposition,
        "network": {"hidden": [8]},
        "sampling": sampling,
        "train": {"steps": 12, "log_every": 4, "eval_every": 6, "compile": "off"},
        "run": {"name": name, "threads": 1},
    }
    config = write_yaml(tmp_path / "cfg.yaml", data)
    assert main(["train", str(config), "--quiet", "--set", f"run.output_dir={tmp_path / 'runs'}"]) == 0
    run_dir = tmp_path / "runs" / name
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "checkpoint.h5", "config.yaml", "metrics.jsonl", "plots", "results.h5", "summary.json",
    ]

    # config.yaml is the resolved config: it loads back to the same tree, defaults filled in
    written = load_config(run_dir / "config.yaml")
    assert to_dict(written) == to_dict(load_config(config, [f"run.output_dir={tmp_path / 'runs'}"]))
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["optimizer"]["lr"] == 1e-3

    metrics = read_metrics(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [4, 6, 8, 12]
    assert all("rel_l2" in m for m in metrics if m["step"] in (6, 12))

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["step"] == 12 and summary["loss"] == metrics[-1]["loss"]
    errors = summary["errors"]
    assert errors == {k: metrics[-1][k] for k in ("rel_l2", "l1", "normalised_l1")}

    # results.h5 holds the test grid, and its arrays give the reported errors
    with h5py.File(run_dir / "results.h5") as f:
        x, pred, exact, err = (f[k][()] for k in ("x", "prediction", "exact", "error"))
        assert list(f.attrs["inputs"]) == list(problem_class(problem["name"]).inputs)
        assert f.attrs["rel_l2"] == errors["rel_l2"]
    assert x.shape == (*test_shape, len(test_shape)) and pred.shape == exact.shape == (*test_shape, 1)
    np.testing.assert_array_equal(err, pred - exact)
    for a, n in enumerate(test_shape):  # C-order grid: axis a varies along array axis a
        line = x[(0,) * a + (slice(None),) + (0,) * (len(test_shape) - a - 1)][:, a]
        np.testing.assert_allclose(np.diff(line), np.diff(line)[0])
        assert line[0] < line[-1]
    rel_l2 = np.linalg.norm(pred - exact) / np.linalg.norm(exact)
    assert rel_l2 == pytest.approx(errors["rel_l2"], rel=1e-12)
    assert np.abs(pred - exact).mean() == pytest.approx(errors["l1"], rel=1e-12)
    assert np.abs(pred - exact).mean() / exact.std() == pytest.approx(errors["normalised_l1"], rel=1e-9)

    # eval recomputes the same errors from the checkpoint
    capsys.readouterr()
    assert main(["eval", str(run_dir)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["step"] == 12
    assert evaluated["errors"] == errors

    # plot redraws the figures
    plots = run_dir / "plots"
    assert sorted(p.name for p in plots.iterdir()) == PLOTS
    for p in plots.iterdir():
        p.unlink()
    assert main(["plot", str(run_dir)]) == 0
    assert capsys.readouterr().out.count("wrote ") == 3
    for p in PLOTS:
        assert (plots / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_problems_lists_the_registry(capsys):
    assert main(["problems"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == registered()
    assert any(line.startswith("heat2d_ms") and "x,y,t" in line for line in out)


NAN_PROBLEM = """
from dataclasses import dataclass
from ddpinn.geometry import Box
from ddpinn.jets import D
from ddpinn.problems import Problem

@dataclass
class Broken(Problem):
    inputs = ("x",)
    derivatives = (D("u", "x"),)
    def domain(self):
        return Box((0.0,), (1.0,))
    def residual(self, x, d):
        return d["u_x"] * float("nan")
"""


@pytest.fixture
def nan_run(tmp_path, small_run):
    (tmp_path / "broken.py").write_text(NAN_PROBLEM)
    data = small_run(problem={"name": f"{tmp_path / 'broken.py'}:Broken"})
    return write_yaml(tmp_path / "nan.yaml", data), tmp_path / "runs" / "run"


def test_non_finite_loss_stops_with_exit_status_3(nan_run, capsys):
    config, run_dir = nan_run
    assert main(["train", str(config), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert "non-finite loss at step 1, before any parameter update, in term(s) ['pde']" in err
    # At step 1 the cause is the problem, located; the learning rate is not the suspect.
    assert "Broken.residual is not finite at 200 point(s) where the model output is finite" in err
    assert "optimizer.lr" not in err
    assert not (run_dir / "checkpoint.h5").exists()


@pytest.mark.parametrize("derivatives", ["jets", "fd"])  # fd: the ansatz is at the stencil points
def test_non_finite_ansatz_at_step_1_is_named(tmp_path, small_run, capsys, derivatives):
    source = NAN_PROBLEM.replace("float(\"nan\")", "1.0") + """
    def hard_constraint(self, x):
        from ddpinn.problems import HardConstraint
        return HardConstraint(scale=x[:, 0] / x[:, 0])   # 0/0 at x = 0
"""
    (tmp_path / "broken.py").write_text(source)
    data = small_run(problem={"name": f"{tmp_path / 'broken.py'}:Broken"}, model={"derivatives": derivatives})
    config = write_yaml(tmp_path / "nan.yaml", data)
    assert main(["train", str(config), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert "the hard-constraint ansatz (Broken.hard_constraint, its scale) is not finite at 1 point(s), e.g. x = [0.0]" in err


def test_non_finite_loss_message_names_only_an_existing_checkpoint(nan_run, capsys):
    config, run_dir = nan_run
    assert main(["train", str(config), "--quiet"]) == 3
    assert "checkpoint.h5" not in capsys.readouterr().err


@pytest.mark.parametrize("ranks", ["0", "-2", "two"])
def test_check_rejects_a_rank_count_below_one(tmp_path, small_run, capsys, ranks):
    config = write_yaml(tmp_path / "c.yaml", small_run())
    with pytest.raises(SystemExit) as exit_:
        main(["check", str(config), "--ranks", ranks])
    assert exit_.value.code == 2
    assert f"argument --ranks: need a whole number of ranks >= 1, got '{ranks}'" in capsys.readouterr().err


def test_a_grid_total_that_is_rounded_is_reported(tmp_path, capsys):
    data = {"problem": {"name": "poisson2d"}, "decomposition": {"levels": 2}, "sampling": {"n": 60, "test_n": [10, 10]}}
    assert main(["check", str(write_yaml(tmp_path / "c.yaml", data))]) == 0
    out = capsys.readouterr().out
    assert "collocation 8x8 grid (64 points) [sampling.n = 60 is a total, rounded to a grid" in out
    assert "give points per axis, e.g. n: [8, 8], for exact counts]; test 10x10 grid (100 points)" in out


@pytest.fixture
def p4_config(tmp_path):
    data = {"problem": {"name": "poisson2d"}, "decomposition": {"levels": 3}, "sampling": {"n": [24, 20], "test_n": [10, 10]}}
    return write_yaml(tmp_path / "p4.yaml", data)


def test_check_reports_pairs_and_per_rank_work_without_building_a_batch(p4_config, capsys):
    from ddpinn.model.batch import build_batch
    from ddpinn.parallel.policy import plan_layout
    from ddpinn.parallel.workload import workload

    assert main(["check", str(p4_config), "--ranks", "4"]) == 0
    out = capsys.readouterr().out
    exp = build_experiment(load_config(p4_config))
    batch = build_batch(exp.problem, exp.decomposition, exp.window, exp.spec, exp.training_points(0))
    for l, cov in enumerate(batch.levels):
        shape = "x".join(map(str, exp.decomposition.levels[l].shape))
        assert f"  level {l + 1}: {shape} subdomains, {cov.n_pairs} (point, subdomain) pairs, network" in out
    assert f"pde: 480; total pairs {batch.n_pairs}\n" in out
    ranks = workload(exp, plan_layout(exp, 4)).ranks
    pairs, halo = [r.pairs for r in ranks], [r.halo_points for r in ranks]
    assert f"per rank      pairs {min(pairs)}-{max(pairs)} (max/mean " in out
    assert f"halo points {min(halo)}-{max(halo)} (max/mean " in out
    assert "memory" not in out  # only with --device-memory


def test_check_says_when_pairs_count_finite_difference_stencil_points(p4_config, capsys):
    assert main(["check", str(p4_config)]) == 0
    jets = capsys.readouterr().out
    assert main(["check", str(p4_config), "--set", "model.derivatives=fd"]) == 0
    fd = capsys.readouterr().out
    assert "stencil points" not in jets
    assert "(model.fd_step 0.01): 5 value-only stencil points per interior point" in fd  # u, u ± h along x and y
    total = {name: int(out.split("total pairs ")[1].split()[0]) for name, out in (("jets", jets), ("fd", fd))}
    assert total["fd"] > 4 * total["jets"]


@pytest.mark.parametrize("text, size", [("80GB", 80 * 10**9), ("512MB", 512 * 10**6), ("1.5GiB", 3 * 2**29),
                                        ("64 kib", 2**16), ("4096", 4096)])
def test_device_memory_sizes(text, size):
    from ddpinn.cli import _memory_size

    assert _memory_size(text) == size


@pytest.mark.parametrize("text", ["eighty", "80XB", "-1GB", "0GB", "GB"])
def test_a_bad_device_memory_is_refused_naming_the_flag(p4_config, capsys, text):
    with pytest.raises(SystemExit) as exit_:
        main(["check", str(p4_config), f"--device-memory={text}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --device-memory: need a positive size with a unit such as 80GB, 512MB or 1.5GiB" in err
    assert repr(text) in err


def test_device_memory_fits_or_stops_naming_what_dominates(p4_config, capsys):
    from ddpinn.cli import DOES_NOT_FIT
    from ddpinn.parallel.memory import estimate_rank_memory
    from ddpinn.parallel.policy import plan_layout
    from ddpinn.parallel.workload import workload

    exp = build_experiment(load_config(p4_config))
    largest = max(estimate_rank_memory(exp, r, "cpu").total_bytes for r in workload(exp, plan_layout(exp, 2)).ranks)
    assert main(["check", str(p4_config), "--ranks", "2", "--device-memory", f"{largest}"]) == 0
    out = capsys.readouterr().out
    assert f"-{largest / 2**20:.0f} MiB on cpu, device {largest / 2**20:.0f} MiB: fits" in out

    assert main(["check", str(p4_config), "--ranks", "2", "--device-memory", f"{largest - 1}"]) == DOES_NOT_FIT == 5
    captured = capsys.readouterr()
    assert "does NOT fit" in captured.out
    err = captured.err
    assert err.startswith("ddpinn: error: --device-memory ") and "needs about" in err
    assert "(point, subdomain) pairs at 240 own + " in err and "most on level " in err and "use more ranks" in err
