"""Subdomain schedules (``schedule:``): roles of the built-ins, config errors, users' schedulers,
and training with roles (dropped points, fixed contributions, masked Adam, resume)."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from ddpinn.build import build_experiment
from ddpinn.config import ConfigError, load_config
from ddpinn.schedule import Role

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
    by_t = lambda roles: roles[2].reshape(4, 4)[0].tolist()  # noqa: E731 - t-profile of level 3
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
        ("sched.py:NotASchedule", ["schedule.kind", "not a SubdomainSchedule subclass"]),
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
