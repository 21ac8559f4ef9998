"""Subdomain schedules (``schedule:``): roles of the built-ins, config errors, users' schedulers,
and training with roles (dropped points, fixed contributions, masked Adam, resume)."""

from __future__ import annotations

import textwrap

import h5py
import numpy as np
import pytest
import torch
from helpers import snapshot_at, write_yaml

from ddpinn.build import build_experiment
from ddpinn.cli import main
from ddpinn.config import ConfigError, load_config
from ddpinn.geometry import Block
from ddpinn.model.batch import build_batch
from ddpinn.parallel.batching import BatchFactory
from ddpinn.parallel.comm import LocalComm
from ddpinn.parallel.layout import ParallelLayout
from ddpinn.schedule import Role
from ddpinn.train.masked_adam import MaskedAdam
from ddpinn.train.scheduled import kept_points, phase_batch

BURGERS = {
    "problem": {"name": "burgers"},
    "decomposition": {"levels": [{"centres": [[-2 / 3, 0.0, 2 / 3], [0.25, 0.75]], "widths": [1.0, 0.75]}]},
    "network": {"hidden": [8]},
    "sampling": {"n": [12, 10], "test_n": [16, 11]},
    "train": {"steps": 10, "compile": "off", "log_every": 5, "eval_every": 0},
    "run": {"threads": 1, "plots": False, "dtype": "float64"},
}
WAVE = {
    "problem": {"name": "wave1d"},
    "decomposition": {"levels": 3},
    "network": {"hidden": [8]},
    "sampling": {"n": [12, 12], "test_n": [12, 12]},
    "train": {"steps": 30, "compile": "off", "log_every": 10, "eval_every": 0},
    "run": {"threads": 1, "plots": False, "dtype": "float64"},
}


def experiment(base: dict, schedule: dict, tmp_path=None, **sections):
    data = {**base, **sections, "schedule": schedule}
    return build_experiment(load_config(data=data), tmp_path)


# ----------------------------------------------------------------------------- built-in roles
def test_all_active_is_the_plain_path():
    s = experiment(BURGERS, {}).schedule
    assert s.all_active and s.transitions() == []
    assert all((r == Role.ACTIVE).all() for r in s.roles_at(7))


def test_sweep_roles_follow_the_band():
    # wave1d on the 3-level layout: level 3 centres at t = 0, 1/3, 2/3, 1 (t is axis 1, so the
    # global id i*4 + j has t-index j). Band 0.5 wide moving by 0.25 every 10 steps: 3 positions.
    s = experiment(WAVE, {"kind": "sweep", "axis": "t", "width": 0.5, "stride": 0.25, "every": 10}).schedule
    assert not s.all_active and s.transitions() == [10, 20]
    by_t = lambda roles: roles[2].reshape(4, 4)[0].tolist()
    A, F, O = Role.ACTIVE, Role.FIXED, Role.OFF
    assert by_t(s.roles_at(0)) == [A, A, O, O]            # band [0, 0.5]
    assert by_t(s.roles_at(10)) == [F, A, A, O]           # band [0.25, 0.75]
    assert by_t(s.roles_at(29)) == [F, F, A, A]           # band [0.5, 1]: it stops at the end
    assert by_t(s.roles_at(30)) == [A, A, A, A]           # L-BFGS: everything trains
    assert s.roles_at(0)[0].tolist() == [A]               # level 1, centre t = 0.5
    assert s.roles_at(29)[1].reshape(2, 2)[0].tolist() == [F, A]
    assert s.phase_start(15) == 10 and s.phase_start(9) == 0 and s.phase_start(30) == 30
    assert [a.tolist() for a in s.active_steps()][2][:4] == [10, 20, 20, 10]


def test_sweep_leaves_unswept_levels_active_and_spreads_steps_by_default():
    s = experiment(WAVE, {"kind": "sweep", "width": 0.5, "stride": 0.25, "levels": [3]}).schedule
    assert s.every == 10 and s.transitions() == [10, 20]  # 30 steps over 3 band positions
    assert all((s.roles_at(25)[l] == Role.ACTIVE).all() for l in (0, 1))
    assert "level(s) 1, 2 active throughout" in s.describe()


def test_coarse_to_fine_roles_and_lr_factors():
    s = experiment(WAVE, {"kind": "coarse_to_fine", "starts": [0, 10, 20], "lr_factors": [1, 0.5, 2]}).schedule
    assert s.transitions() == [10, 20] and s.level_lr_factors() == [1.0, 0.5, 2.0]
    assert [int(r[0]) for r in s.roles_at(5)] == [Role.ACTIVE, Role.OFF, Role.OFF]
    assert [int(r[0]) for r in s.roles_at(10)] == [Role.ACTIVE, Role.ACTIVE, Role.OFF]
    fixed = experiment(WAVE, {"kind": "coarse_to_fine", "starts": [0, 10, 20], "fix_coarser": True}).schedule
    assert [int(r[0]) for r in fixed.roles_at(25)] == [Role.FIXED, Role.FIXED, Role.ACTIVE]


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "schedule, fragments",
    [
        ({"kind": "sweep", "axis": "y", "width": 0.5}, ["schedule.axis", "'y'", "inputs ['x', 't']"]),
        ({"kind": "sweep", "width": 0.0}, ["schedule.width", "> 0"]),
        ({"kind": "sweep", "width": -1.0}, ["schedule.width", "> 0"]),
        ({"kind": "sweep"}, ["schedule.width", "needs the band width"]),
        ({"kind": "sweep", "width": 0.5, "stride": 0}, ["schedule.stride", "> 0"]),
        ({"kind": "sweep", "width": 0.5, "every": 0}, ["schedule.every", "> 0"]),
        ({"kind": "sweep", "width": 0.1, "stride": 0.5}, ["schedule.stride", "never inside the band", "stride <= width"]),
        ({"kind": "sweep", "width": 0.1, "stride": 0.1}, ["no subdomain is active", "widen schedule.width"]),
        ({"kind": "sweep", "width": 0.5, "levels": [4]}, ["schedule.levels", "level 4", "1..3"]),
        ({"kind": "coarse_to_fine", "starts": [0, 10, 30]}, ["schedule.starts", "level 3", "beyond", "30 Adam steps"]),
        ({"kind": "coarse_to_fine", "starts": [0, 10]}, ["schedule.starts", "2 steps for 3 levels"]),
        ({"kind": "coarse_to_fine", "starts": [5, 10, 20]}, ["schedule.starts", "must start at 0"]),
        ({"kind": "coarse_to_fine"}, ["schedule.starts", "needs the step"]),
        ({"kind": "coarse_to_fine", "starts": [0, 1, 2], "lr_factors": [1, 2]}, ["schedule.lr_factors", "2 factors for 3"]),
        ({"kind": "coarse_to_fine", "starts": [0, 1, 2], "lr_factors": [1, 0, 1]}, ["schedule.lr_factors", "> 0"]),
        ({"kind": "all_active", "width": 0.5}, ["schedule.width", "only used by kind sweep"]),
        ({"kind": "all_active", "lr_factors": [1, 1, 1]}, ["schedule.lr_factors", "all_active"]),
        ({"kind": "marching"}, ["schedule.kind", "'marching'"]),
    ],
)
def test_bad_schedules_are_config_errors(schedule, fragments):
    with pytest.raises(ConfigError) as err:
        experiment(WAVE, schedule)
    for fragment in fragments:
        assert fragment in str(err.value)


# ----------------------------------------------------------------------------- users' schedulers
USER_SCHEDULER = textwrap.dedent(
    """
    import numpy as np
    from ddpinn.schedule import Role, SubdomainSchedule

    class EvenFirst(SubdomainSchedule):
        '''Even subdomain ids of every level train first, all from step `switch` on.'''
        def roles(self, step):
            switch = self.context.params["switch"]
            out = []
            for n in self.context.level_sizes:
                r = np.full(n, Role.ACTIVE, dtype=np.int8)
                if step < switch:
                    r[1::2] = Role.OFF
                out.append(r)
            return out
        def transitions(self):
            return [self.context.params["switch"]]

    class NoTransitions(SubdomainSchedule):
        def roles(self, step):
            return [np.full(n, Role.ACTIVE, dtype=np.int8) for n in self.context.level_sizes]

    class Forgetful(EvenFirst):
        def transitions(self):
            return []

    class WrongShape(EvenFirst):
        def roles(self, step):
            return [np.zeros(2, dtype=np.int8) for _ in self.context.level_sizes]

    class NotASchedule:
        pass
    """
)


def test_user_scheduler_from_a_file(tmp_path):
    (tmp_path / "sched.py").write_text(USER_SCHEDULER)
    s = experiment(WAVE, {"kind": "sched.py:EvenFirst", "params": {"switch": 12}}, tmp_path).schedule
    assert type(s).__name__ == "EvenFirst" and s.transitions() == [12]
    assert s.roles_at(0)[2].tolist()[:4] == [Role.ACTIVE, Role.OFF, Role.ACTIVE, Role.OFF]
    assert (s.roles_at(12)[2] == Role.ACTIVE).all()


@pytest.mark.parametrize(
    "kind, fragments",
    [
        ("missing.py:EvenFirst", ["schedule.kind", "'missing.py' not found"]),
        ("sched.py:Absent", ["schedule.kind", "defines no 'Absent'"]),
        ("sched.py:NotASchedule", ["schedule.kind", "not a ddpinn SubdomainSchedule subclass"]),
        ("sched.py:NoTransitions", ["schedule.kind", "does not implement transitions"]),
        ("sched.py:Forgetful", ["schedule.kind", "changes between steps 0 and 29 without a transition"]),
        ("sched.py:WrongShape", ["schedule.kind", "WrongShape.roles(0)[0] must be [1] integer Role values"]),
    ],
)
def test_bad_user_schedulers_are_config_errors(tmp_path, kind, fragments):
    (tmp_path / "sched.py").write_text(USER_SCHEDULER)
    with pytest.raises(ConfigError) as err:
        experiment(WAVE, {"kind": kind, "params": {"switch": 12}}, tmp_path)
    for fragment in fragments:
        assert fragment in str(err.value)


# ----------------------------------------------------------------------------- training with roles
SWEEP = {"kind": "sweep", "width": 0.5, "stride": 0.25, "every": 10, "levels": [2, 3]}


def _phase_setup(step: int, **sections):
    exp = experiment(WAVE, SWEEP, **sections)
    layout = ParallelLayout.single(exp.decomposition, exp.cells)
    model = exp.make_model()
    factory = BatchFactory(exp, layout, LocalComm(), torch.device("cpu"))
    roles = exp.schedule.roles_at(step)
    groups = exp.training_points(0, Block.whole(exp.decomposition.domain))
    return exp, model, factory, roles, groups


def test_kept_points_are_those_inside_an_active_subdomain():
    exp, _, _, roles, groups = _phase_setup(25)
    x = groups["pde"]
    expected = np.zeros(x.shape[0], dtype=bool)
    for level, level_roles in zip(exp.decomposition.levels, roles):
        lo, hi = level.subdomain_boxes()
        for j in np.flatnonzero(level_roles == Role.ACTIVE):
            inside = np.ones(x.shape[0], dtype=bool)
            for a in range(x.shape[1]):
                if level.shape[a] > 1:
                    inside &= (x[:, a] > lo[j, a]) & (x[:, a] < hi[j, a])
            expected |= inside
    roles_no_level1 = [np.full_like(roles[0], Role.FIXED), *roles[1:]]
    kept = kept_points(exp.decomposition, roles_no_level1, x)
    expected_wo = np.zeros_like(expected)
    for level, level_roles in list(zip(exp.decomposition.levels, roles_no_level1))[1:]:
        lo, hi = level.subdomain_boxes()
        for j in np.flatnonzero(level_roles == Role.ACTIVE):
            expected_wo |= np.all((x > lo[j]) & (x < hi[j]), axis=1)
    assert kept.tolist() == expected_wo.tolist() and 0 < kept.sum() < x.shape[0]  # some points dropped
    assert kept_points(exp.decomposition, roles, x).all()  # level 1 is active and covers everything


@pytest.mark.parametrize("derivatives", ["jets", "fd"])
def test_fixed_sums_equal_evaluating_the_fixed_subdomains(derivatives):
    """The phase batch (active coverages + fixed subdomains' sums computed once) gives the same
    u and jets as evaluating every non-off subdomain on the kept points (with finite differences:
    at their stencil points, fixed sums included)."""
    exp, model, factory, roles, groups = _phase_setup(25, model={"derivatives": derivatives})
    batch = phase_batch(factory, model, roles, groups, {})
    assert batch.fixed_sums is not None and batch.fixed_sums.abs().max() > 0
    active_ids = {int(i) for cov in batch.levels[2:] for i in cov.subdomain_ids}
    assert active_ids and all(roles[2][i] == Role.ACTIVE for i in batch.levels[2].subdomain_ids.tolist())
    present = [r != Role.OFF for r in roles]
    kept = {g: x[kept_points(exp.decomposition, roles, x)] for g, x in groups.items()}
    fd = exp.finite_difference
    stencil = None if fd is None else fd.stencil(np.concatenate(list(kept.values())), exp.spec)
    plain = build_batch(exp.problem, exp.decomposition, exp.window, exp.spec, kept, present=present, dtype=exp.dtype,
                        stencil=stencil)
    assert (batch.stencil is None) == (derivatives == "jets")
    # Differences divide the round-off of the sums' order by h^2 (~1e-5 here): 1e-11, not 1e-16.
    tol = 1e-12 if derivatives == "jets" else 1e-9
    with torch.no_grad():
        torch.testing.assert_close(model(batch), model(plain), rtol=tol, atol=tol)
    # and fixed subdomains take no part in the backward pass
    u = model(batch)
    u.sum().backward()
    level3 = model.nets[2]
    grad_rows = next(iter(level3.parameters())).grad.reshape(roles[2].size, -1).abs().sum(1)
    assert (grad_rows[torch.from_numpy(roles[2] != Role.ACTIVE)] == 0).all()
    assert (grad_rows[torch.from_numpy(roles[2] == Role.ACTIVE)] > 0).all()


def _adam_setup(factors=(1.0, 1.0, 1.0)):
    exp = experiment(WAVE, SWEEP)
    model = exp.make_model()
    params = list(model.parameters())
    opt = MaskedAdam(params, model, lr=0.01, betas=(0.9, 0.999), eps=1e-12, level_factors=factors)
    return exp, model, params, opt


def _random_grads(params, seed):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)


def test_masked_adam_moves_only_active_rows_and_counts_steps_per_row():
    exp, model, params, opt = _adam_setup()
    early, late = exp.schedule.roles_at(0), exp.schedule.roles_at(10)
    opt.set_roles(early)
    for k in range(3):
        _random_grads(params, k)
        opt.step()
    before = {id(p): p.detach().clone() for p in params}
    state_before = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in params}
    opt.set_roles(late)
    _random_grads(params, 7)
    opt.step()
    net = model.nets[2]
    moved_active = False
    for p in net.parameters():
        changed = (p.detach() != before[id(p)]).reshape(p.shape[0], -1).any(1).numpy()
        state = opt.state[p]
        frozen = late[2] != Role.ACTIVE
        assert not changed[frozen].any()  # fixed and off rows keep their values
        for key in ("exp_avg", "exp_avg_sq"):  # ... and their moments
            same = (state[key] == state_before[id(p)][key]).reshape(p.shape[0], -1).all(1).numpy()
            assert same[frozen].all() and not same[~frozen].any()
        assert changed[~frozen].all()
        moved_active = True
        # per-row counts: 3 early steps where active then, +1 where active now
        expected = 3 * (early[2] == Role.ACTIVE) + (late[2] == Role.ACTIVE)
        assert state["step"].tolist() == expected.astype(float).tolist()
    assert moved_active
    # a subdomain active for the first time gets a full first Adam step: |Δ| = lr (bias-corrected)
    first_time = np.flatnonzero((early[2] != Role.ACTIVE) & (late[2] == Role.ACTIVE))
    w = next(iter(net.parameters()))
    delta = (w.detach() - before[id(w)])[first_time].abs()
    torch.testing.assert_close(delta, torch.full_like(delta, 0.01), rtol=1e-6, atol=0)


def test_masked_adam_level_lr_factors_and_finite_flag():
    exp, model, params, opt = _adam_setup((1.0, 0.5, 2.0))
    opt.set_roles([np.full(r.size, Role.ACTIVE, dtype=np.int8) for r in exp.schedule.roles_at(0)])
    before = [p.detach().clone() for p in params]
    _random_grads(params, 1)
    opt.found_inf = torch.ones(())  # a non-finite step: nothing moves
    opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert all(float(opt.state[p]["step"].max()) == 0 for p in params)
    opt.found_inf = torch.zeros(())
    opt.step()
    for level, factor in enumerate((1.0, 0.5, 2.0)):
        w = next(iter(model.nets[level].parameters()))
        b = before[[id(p) for p in params].index(id(w))]
        delta = (w.detach() - b).abs()
        torch.testing.assert_close(delta, torch.full_like(delta, 0.01 * factor), rtol=1e-6, atol=0)


def _arrays(path):
    with h5py.File(path, "r") as f:
        out = {}
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        return out, int(f.attrs["adam_step"])


@pytest.mark.parametrize("schedule", [SWEEP, {"kind": "coarse_to_fine", "starts": [0, 8, 16], "lr_factors": [1, 2, 0.5]}])
def test_resume_through_a_transition_equals_the_uninterrupted_run(schedule, tmp_path, monkeypatch, capsys):
    """Checkpoint at step 5, before the transitions (10, 20 / 8, 16) and the switch to L-BFGS
    (all active): the resumed run ends with the uninterrupted run's parameters, Adam moments and
    per-subdomain step counts."""
    data = {**WAVE, "schedule": schedule, "lbfgs": {"steps": 3},
            "train": {**WAVE["train"], "checkpoint_every": 5},
            "run": {**WAVE["run"], "output_dir": str(tmp_path / "runs"), "name": "run"}}
    config = write_yaml(tmp_path / "run.yaml", data)
    crashed = tmp_path / "crashed"
    snapshot_at(monkeypatch, 5, crashed)
    assert main(["train", str(config)]) == 0
    monkeypatch.undo()
    out = capsys.readouterr().out
    assert "subdomain schedule:" in out and "schedule steps 0-" in out and "(L-BFGS)" in out
    assert main(["train", "--resume", str(crashed), "--quiet"]) == 0
    full, full_step = _arrays(tmp_path / "runs" / "run" / "checkpoint.h5")
    resumed, resumed_step = _arrays(crashed / "checkpoint.h5")
    assert sorted(full) == sorted(resumed) and full_step == resumed_step == 30
    assert any("/adam_t/" in k for k in full)
    for key, value in full.items():
        if key.startswith("level_"):
            np.testing.assert_allclose(resumed[key], value, rtol=0, atol=1e-12, err_msg=key)
