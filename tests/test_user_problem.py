"""A user's own Problem, defined in a file and referenced as ``problem.name: path.py:ClassName``."""

from __future__ import annotations

import json
import math
import textwrap

import pytest

from ddpinn.cli import main
from ddpinn.io.outputs import read_metrics
from helpers import write_yaml

SINE = textwrap.dedent(
    """
    import math
    from dataclasses import dataclass

    import torch

    from ddpinn.geometry import Box
    from ddpinn.jets import D
    from ddpinn.problems import Constraint, Face, HardConstraint, Problem


    @dataclass
    class Sine(Problem):
        '''-u'' = (kπ)² sin(kπx) on [0, 1], u(0) = 0 (hard), u'(1) = kπ cos(kπ) (soft).'''

        k: float = 1.0
        inputs = ("x",)
        derivatives = (D("u", "x", "x"),)

        def domain(self):
            return Box((0.0,), (1.0,))

        def residual(self, x, d):
            w = self.k * math.pi
            return -d["u_xx"] - w**2 * torch.sin(w * x[:, 0])

        def hard_constraint(self, x):
            return HardConstraint(scale=x[:, 0])

        def constraints(self):
            w = self.k * math.pi
            return (Constraint("flux", Face("x", "hi"), lambda x, d: d["u_x"] - w * math.cos(w),
                               derivatives=(D("u", "x"),), n_points=1),)

        def exact(self, x):
            return torch.sin(self.k * math.pi * x[:, :1])
    """
)


@pytest.mark.parametrize("reference", ["absolute", "relative"])
def test_user_problem_checks_and_trains(tmp_path, monkeypatch, capsys, reference):
    project = tmp_path / "project"
    project.mkdir()
    (project / "sine.py").write_text(SINE)
    name = f"{project / 'sine.py'}:Sine" if reference == "absolute" else "sine.py:Sine"
    config = write_yaml(
        project / "sine.yaml",
        {
            "problem": {"name": name, "params": {"k": 2}},
            "decomposition": {"levels": [{"subdomains": 4}]},
            "network": {"hidden": [8]},
            "optimizer": {"lr": 1e-2},
            "sampling": {"n": 60, "test_n": 50},
            "train": {"steps": 50, "log_every": 10, "eval_every": 25, "compile": "off"},
            "run": {"output_dir": str(tmp_path / "runs"), "name": "sine", "threads": 1, "plots": False},
        },
    )
    monkeypatch.chdir(tmp_path)  # not the config's directory: a relative reference is resolved against it
    assert main(["check", str(config)]) == 0
    out = capsys.readouterr().out
    assert "derivatives   ['u', 'u_x', 'u_xx']" in out
    assert "points        collocation 60 grid (60 points); test 50 grid (50 points)" in out
    assert "              pde: 60, flux: 1;" in out

    assert main(["train", str(config), "--quiet"]) == 0
    run_dir = tmp_path / "runs" / "sine"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["step"] == 50 and math.isfinite(summary["loss"])
    metrics = read_metrics(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [10, 20, 25, 30, 40, 50]
    assert set(metrics[-1]["terms"]) == {"pde", "flux"}
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    # the resolved config points at the file by absolute path, so a resume from anywhere finds it
    assert f"{project / 'sine.py'}:Sine" in (run_dir / "config.yaml").read_text()
    monkeypatch.chdir(project.parent.parent)
    assert main(["train", "--resume", str(run_dir), "--quiet", "--set", "train.steps=60"]) == 0
    assert json.loads((run_dir / "summary.json").read_text())["step"] == 60


NO_EXACT = textwrap.dedent(
    """
    from dataclasses import dataclass
    from ddpinn.geometry import Box
    from ddpinn.jets import D
    from ddpinn.problems import HardConstraint, Problem

    @dataclass
    class Membrane(Problem):
        inputs = ("x", "y")
        derivatives = (D("u", "x", "x"), D("u", "y", "y"))
        def domain(self):
            return Box((0.0, 0.0), (1.0, 1.0))
        def residual(self, x, d):
            return d["u_xx"] + d["u_yy"] + 1.0
        def hard_constraint(self, x):
            return HardConstraint(scale=x[:, 0] * (1 - x[:, 0]) * x[:, 1] * (1 - x[:, 1]))
    """
)


def test_user_problem_without_exact_solution_trains_evaluates_and_plots(tmp_path, capsys):
    (tmp_path / "membrane.py").write_text(NO_EXACT)
    config = write_yaml(tmp_path / "m.yaml", {
        "problem": {"name": "membrane.py:Membrane"},
        "decomposition": {"levels": 2},
        "sampling": {"n": [8, 8], "test_n": [10, 10]},
        "train": {"steps": 10, "log_every": 5, "compile": "off"},
        "run": {"output_dir": str(tmp_path / "runs"), "name": "m", "threads": 1},
    })
    assert main(["train", str(config), "--quiet"]) == 0
    run_dir = tmp_path / "runs" / "m"
    assert json.loads((run_dir / "summary.json").read_text())["errors"] is None
    assert "rel_l2" not in read_metrics(run_dir / "metrics.jsonl")[-1]
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == ["curves.png", "decomposition.png", "solution.png"]
    capsys.readouterr()
    assert main(["eval", str(run_dir)]) == 0
    assert json.loads(capsys.readouterr().out) == {"step": 10, "errors": None}


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from ddpinn.problems import Problem\nclass Sine(Problem:\n    pass\n",
         ["sine.py:2: syntax error:", "    class Sine(Problem:"]),
        ("import math\nK = math.pi\nraise ValueError('K must be set by the user')\n",
         ["sine.py:3: ValueError: K must be set by the user", "    raise ValueError('K must be set by the user')"]),
    ],
    ids=["syntax", "raises"],
)
def test_broken_user_file_reports_file_and_line_without_traceback(tmp_path, capsys, source, expected):
    (tmp_path / "sine.py").write_text(source)
    config = write_yaml(tmp_path / "c.yaml", {"problem": {"name": "sine.py:Sine"}, "sampling": {"n": 10}})
    assert main(["check", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ddpinn: error: problem.name: ")
    for text in expected:
        assert text in err
    assert "Traceback" not in err
