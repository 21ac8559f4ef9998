"""The test grid in chunks: chunk boxes tile each rank's part of the grid, chunked evaluation and
the streamed results.h5 equal the unchunked ones, the final write gathers to rank 0 only, and
the plots read a strided subsample of a large grid."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from ddpinn.build import build_experiment
from ddpinn.config import load_config
from ddpinn.geometry.decomposition import Box
from ddpinn.io.outputs import ResultsWriter
from ddpinn.io.plots import IMAGE_AXIS_POINTS, LINE_POINTS, read_strided
from ddpinn.parallel import batching
from ddpinn.parallel.comm import LocalComm
from ddpinn.parallel.grid_chunks import GridBox, RegularGrid, split_box
from ddpinn.session import make_layout, run_training
from ddpinn.train.finish import write_final_outputs
from ddpinn.train.trainer import Trainer

# 2-D Poisson on an odd test grid (23 x 17), float64: chunks of 7 points cut rows into pieces.
SMALL = {
    "problem": {"name": "poisson2d", "params": {"frequencies": [2.0, 4.0]}},
    "decomposition": {"levels": 3},
    "network": {"hidden": [8]},
    "sampling": {"method": "uniform", "n": 200, "test_n": [23, 17]},
    "train": {"steps": 4, "log_every": 2, "eval_every": 2, "compile": "off"},
    "run": {"dtype": "float64", "plots": False, "threads": 1},
}


def small_config(tmp_path, name: str, **sampling):
    data = json.loads(json.dumps(SMALL))
    data["sampling"].update(sampling)
    data["run"].update(output_dir=str(tmp_path), name=name)
    return load_config(data=data)


@pytest.mark.parametrize("shape,max_points", [
    ((23, 17), 7), ((23, 17), 17), ((23, 17), 40), ((23, 17), 10_000), ((50,), 9), ((4, 5, 6), 11), ((4, 5, 6), 1),
])
def test_chunks_tile_the_box_once_in_c_order_within_the_limit(shape, max_points):
    box = GridBox(tuple(range(1, len(shape) + 1)), tuple(a + n for a, n in zip(range(1, len(shape) + 1), shape)))
    chunks = split_box(box, max_points)
    assert all(0 < c.n_points <= max_points for c in chunks)
    # Each chunk is a hyperslab; together, in order, they list the box's points in C order once.
    index = np.arange(int(np.prod([b + 1 for b in box.stop]))).reshape([b + 1 for b in box.stop])
    listed = np.concatenate([index[c.slices].reshape(-1) for c in chunks])
    np.testing.assert_array_equal(listed, index[box.slices].reshape(-1))
    assert split_box(GridBox((0, 0), (0, 5)), max_points) == []


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_a_ranks_grid_box_holds_exactly_its_test_points(world_size):
    exp = build_experiment(load_config(data={**SMALL, "sampling": {**SMALL["sampling"], "test_n": [23, 18]}}))
    layout = make_layout(exp, world_size)
    grid = RegularGrid.of(exp.decomposition.domain, exp.test_shape())
    for q in range(world_size):
        np.testing.assert_array_equal(grid.points(grid.owned_box(layout.block(q))), exp.test_points(layout.block(q)))


def test_chunked_run_equals_unchunked_run(tmp_path):
    """test_chunk 7 (53 chunks) and the default (one chunk): the same errors at every evaluation
    and the same results.h5, up to rounding (the forward pass sums over other batch sizes)."""
    whole = run_training(small_config(tmp_path, "whole"), quiet=True)
    chunked = run_training(small_config(tmp_path, "chunked", test_chunk=7), quiet=True)
    for key, value in whole.errors.as_dict().items():
        assert getattr(chunked.errors, key) == pytest.approx(value, rel=1e-12)
    evals = [[m["rel_l2"] for m in map(json.loads, (tmp_path / n / "metrics.jsonl").read_text().splitlines())
              if "rel_l2" in m] for n in ("whole", "chunked")]
    assert len(evals[0]) == 2 and evals[1] == pytest.approx(evals[0], rel=1e-12)
    with h5py.File(tmp_path / "whole" / "results.h5") as f, h5py.File(tmp_path / "chunked" / "results.h5") as g:
        assert set(f) == set(g) == {"x", "prediction", "exact", "error"}
        assert dict(f.attrs).keys() == dict(g.attrs).keys()
        np.testing.assert_array_equal(f["x"][()], g["x"][()])
        np.testing.assert_array_equal(f["exact"][()], g["exact"][()])
        assert f["prediction"].shape == (23, 17, 1)
        np.testing.assert_allclose(g["prediction"][()], f["prediction"][()], rtol=0, atol=1e-13)
        np.testing.assert_allclose(g["error"][()], g["prediction"][()] - g["exact"][()], rtol=0, atol=0)
    # x in grid order: the linspace of each axis, C order.
    with h5py.File(tmp_path / "chunked" / "results.h5") as g:
        x = g["x"][()]
    np.testing.assert_array_equal(x[:, 0, 0], np.linspace(0, 1, 23))
    np.testing.assert_array_equal(x[0, :, 1], np.linspace(0, 1, 17))


def trainer_on(tmp_path, comm, **sampling) -> Trainer:
    cfg = small_config(tmp_path, "direct", **sampling)
    exp = build_experiment(cfg)
    return Trainer(exp, comm=comm, layout=make_layout(exp, 1), device=torch.device("cpu"), run_dir=cfg.run_dir,
                   quiet=True)


class CountingComm(LocalComm):
    """One process that counts its object collectives."""

    def __init__(self) -> None:
        self.calls = {"allgather_object": 0, "gather_object": 0}

    def allgather_object(self, obj):
        self.calls["allgather_object"] += 1
        return super().allgather_object(obj)

    def gather_object(self, obj, root=0):
        self.calls["gather_object"] += 1
        return super().gather_object(obj, root)


def test_final_write_gathers_each_chunk_to_rank_0_and_never_allgathers(tmp_path):
    comm = CountingComm()
    trainer = trainer_on(tmp_path, comm, test_chunk=50)
    trainer.run_dir.mkdir(parents=True)
    errors = trainer.evaluate(trainer.test_set)
    comm.calls.update(allgather_object=0, gather_object=0)
    write_final_outputs(trainer.run_dir, trainer.exp, comm, trainer.test_set, trainer.predict, errors, {"step": 0},
                        print)
    assert comm.calls == {"allgather_object": 0, "gather_object": len(trainer.test_set.chunks)}
    assert len(trainer.test_set.chunks) == 12  # 23 x 17 in chunks of 2 rows (34 points)
    with h5py.File(trainer.run_dir / "results.h5") as f:
        assert f.attrs["rel_l2"] == errors.rel_l2


@pytest.mark.parametrize("cache_bytes,builds", [(batching.TEST_CACHE_BYTES, 12), (0, 36)])
def test_chunk_batches_are_kept_only_within_the_cache_bound(tmp_path, monkeypatch, cache_bytes, builds):
    """Three evaluations of 12 chunks: built once when they fit the bound, at every evaluation
    when they do not; the errors are the same either way."""
    monkeypatch.setattr(batching, "TEST_CACHE_BYTES", cache_bytes)
    trainer = trainer_on(tmp_path, LocalComm(), test_chunk=50)
    built = []
    build = trainer.batches.test_batch
    monkeypatch.setattr(trainer.batches, "test_batch", lambda x: built.append(len(x)) or build(x))
    errors = [trainer.evaluate(trainer.test_set) for _ in range(3)]
    assert len(built) == builds
    assert trainer.test_set.caches is (cache_bytes > 0)
    assert errors[0] == errors[1] == errors[2]


def test_results_writer_fills_boxes_in_any_order_and_keeps_old_results_on_error(tmp_path):
    grid = RegularGrid.of(Box((0.0, 0.0), (1.0, 1.0)), (5, 4))
    x = grid.points(GridBox((0, 0), (5, 4)))
    pred, exact = x[:, :1] * 2.0, x[:, 1:] - 1.0
    path = tmp_path / "results.h5"

    def write(boxes):
        with ResultsWriter(path, grid_shape=(5, 4), n_out=1, has_exact=True, input_names=("x", "y"),
                           output_names=("u",), errors={"rel_l2": 0.5}, step=3) as writer:
            for box in boxes:
                rows = np.ravel_multi_index(np.meshgrid(*map(np.arange, box.start, box.stop), indexing="ij"),
                                            (5, 4)).reshape(-1)
                writer.write(box.slices, x[rows], pred[rows], exact[rows])

    write(split_box(GridBox((0, 0), (5, 4)), 3)[::-1])
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["x"][()], x.reshape(5, 4, 2))
        np.testing.assert_array_equal(f["prediction"][()], pred.reshape(5, 4, 1))
        np.testing.assert_array_equal(f["error"][()], (pred - exact).reshape(5, 4, 1))
        assert f.attrs["step"] == 3 and list(f.attrs["outputs"]) == ["u"]
    before = path.read_bytes()
    with pytest.raises(RuntimeError), ResultsWriter(path, grid_shape=(5, 4), n_out=1, has_exact=False,
                                                    input_names=("x", "y"), output_names=("u",), errors={}, step=4):
        raise RuntimeError("a peer failed")
    assert path.read_bytes() == before


def test_plots_read_a_strided_subsample_of_a_large_grid(tmp_path):
    with h5py.File(tmp_path / "r.h5", "w") as f:
        big = f.create_dataset("big", data=np.arange(2500 * 7 * 1.0).reshape(2500, 7, 1))
        line = f.create_dataset("line", data=np.arange(25_001 * 1.0).reshape(25_001, 1))
        cube = f.create_dataset("cube", data=np.arange(2100 * 3 * 5 * 1.0).reshape(2100, 3, 5, 1))
        image = read_strided(big)
        assert image.shape == (834, 7, 1) and max(image.shape[:-1]) <= IMAGE_AXIS_POINTS
        np.testing.assert_array_equal(image, big[()][::3])
        assert read_strided(line).shape[0] <= LINE_POINTS
        np.testing.assert_array_equal(read_strided(line), line[()][::3])
        np.testing.assert_array_equal(read_strided(cube, (slice(None), slice(None), 4)), cube[()][::3, :, 4])
