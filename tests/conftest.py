"""Fixtures of the single-process test suite (plain helpers are in helpers.py).

:func:`small_run` gives a small, fast run config (a plain dict, as YAML would give) whose run
directory lies under pytest's ``tmp_path``.
"""

from __future__ import annotations

import copy
import pytest

_SMALL_P1 = {
    "problem": {"name": "cos1d", "params": {"omega": 15.0}},
    "decomposition": {"levels": [{"subdomains": 8}], "overlap": 1.9},
    "network": {"hidden": [8]},
    "sampling": {"method": "grid", "n": 200, "test_n": 300},
    "train": {"steps": 20, "log_every": 5, "eval_every": 10, "compile": "off"},
    "run": {"name": "run", "threads": 1, "plots": False},
}


@pytest.fixture
def small_run(tmp_path):
    """Factory: ``small_run(**sections)`` -> a small cos1d config dict (sections merged in)."""

    def make(**sections) -> dict:
        data = copy.deepcopy(_SMALL_P1)
        data["run"]["output_dir"] = str(tmp_path / "runs")
        for section, values in sections.items():
            if isinstance(values, dict) and isinstance(data.get(section), dict) and section != "problem":
                data[section].update(values)
            else:
                data[section] = values
        return data

    return make


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The test problems are tiny and the machine's cores are shared: one intra-op thread is
    faster and steadier than oversubscribed ones (runs set their own via ``run.threads``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
