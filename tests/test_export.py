"""``ddpinn export``: the XDMF files read back as a viewer reads them (structure, datasets, and
which coordinates each value sits at), npz round trips, and the refusals."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import write_yaml

import ddpinn
from ddpinn.cli import main
from ddpinn.io.export import ExportError, GridFields, write_npz, write_xdmf
from ddpinn.sampling import grid_lines


def read_xdmf(path: Path) -> list[tuple[float | None, list[np.ndarray], dict[str, np.ndarray]]]:
    """Each grid of an .xdmf file as a viewer sees it: (time or None, per-axis coordinates in the
    XDMF order (slowest first, so X last), field name -> values read from the HDF5 file). Asserts
    the structure on the way: XDMF 3, CoRectMesh topology and ORIGIN_DXDY(DZ) geometry of matching
    dimensions, every dataset present with the attribute's dimensions."""
    root = ET.parse(path).getroot()
    assert root.tag == "Xdmf" and root.get("Version") == "3.0"
    (top,) = root.findall("Domain/Grid")
    if top.get("GridType") == "Collection":
        assert top.get("CollectionType") == "Temporal"
        grids = top.findall("Grid")
    else:
        grids = [top]
    out = []
    for grid in grids:
        assert grid.get("GridType") == "Uniform"
        topology = grid.find("Topology")
        dims = tuple(int(v) for v in topology.get("Dimensions").split())
        assert topology.get("TopologyType") == f"{len(dims)}DCoRectMesh"
        geometry = grid.find("Geometry")
        assert geometry.get("GeometryType") == {2: "ORIGIN_DXDY", 3: "ORIGIN_DXDYDZ"}[len(dims)]
        items = {item.get("Name"): np.array(item.text.split(), dtype=float) for item in geometry.findall("DataItem")}
        assert set(items) == {"Origin", "Spacing"} and all(v.shape == (len(dims),) for v in items.values())
        coords = [items["Origin"][k] + items["Spacing"][k] * np.arange(n) for k, n in enumerate(dims)]
        time = grid.find("Time")
        fields = {}
        for attribute in grid.findall("Attribute"):
            assert attribute.get("Center") == "Node" and attribute.get("AttributeType") == "Scalar"
            item = attribute.find("DataItem")
            assert item.get("Format") == "HDF" and tuple(int(v) for v in item.get("Dimensions").split()) == dims
            file, dataset = item.text.strip().split(":", 1)
            with h5py.File(path.parent / file, "r") as f:
                assert dataset in f, f"{dataset} missing from {file}"
                fields[attribute.get("Name")] = f[dataset][()]
            assert fields[attribute.get("Name")].shape == dims
        out.append((None if time is None else float(time.get("Value")), coords, fields))
    return out


def linear(inputs: tuple[str, ...], coords: dict[str, np.ndarray]) -> np.ndarray:
    """A field that tells its axes apart: Σ_a 10^a · input_a."""
    return sum(10.0 ** a * coords[name] for a, name in enumerate(inputs))


def synthetic(inputs: tuple[str, ...], shape: tuple[int, ...]) -> GridFields:
    axes = tuple(grid_lines(a + 1.0, a + 2.0, n) for a, n in enumerate(shape))
    mesh = dict(zip(inputs, np.meshgrid(*axes, indexing="ij")))
    u = linear(inputs, mesh)
    return GridFields(inputs, ("u",), axes, {"u": u, "u_exact": 2 * u}, step=7)


@pytest.mark.parametrize("inputs, shape, n_times", [
    (("x", "y"), (4, 3), None),
    (("x", "y", "z"), (4, 3, 2), None),
    (("x", "t"), (5, 3), None),  # one spatial axis: one space-time image, x along X
    (("x", "y", "t"), (4, 3, 2), 2),
    (("t", "x", "y"), (3, 4, 5), 3),
    (("x", "y", "z", "t"), (3, 2, 4, 2), 2),
])
def test_xdmf_values_sit_at_their_coordinates(tmp_path, inputs, shape, n_times):
    fields = synthetic(inputs, shape)
    (tmp_path / "out").mkdir()
    written = write_xdmf(fields, tmp_path / "out" / "solution.xdmf")
    assert written == [tmp_path / "out" / "solution.xdmf", tmp_path / "out" / "solution.h5"]
    grids = read_xdmf(written[0])
    spatial = [n for n in inputs if n != "t"] if n_times else list(inputs)
    time_axis = fields.axes[inputs.index("t")] if n_times else None
    assert len(grids) == (n_times or 1)
    for k, (time, coords, values) in enumerate(grids):
        assert set(values) == {"u", "u_exact"}
        # XDMF lists axes slowest first; the first input is X, the last listed.
        assert [len(c) for c in coords] == [shape[inputs.index(n)] for n in reversed(spatial)]
        mesh = dict(zip(reversed(spatial), np.meshgrid(*coords, indexing="ij")))
        if n_times:
            assert time == pytest.approx(time_axis[k])
            mesh["t"] = np.full_like(mesh[spatial[0]], time_axis[k])
        else:
            assert time is None
        np.testing.assert_allclose(values["u"], linear(inputs, mesh), rtol=1e-12)
        np.testing.assert_allclose(values["u_exact"], 2 * linear(inputs, mesh), rtol=1e-12)
    with h5py.File(written[1], "r") as f:
        assert list(f.attrs["inputs"]) == list(inputs) and int(f.attrs["step"]) == 7
        for a, name in enumerate(inputs):
            np.testing.assert_array_equal(f[f"axes/{name}"][()], fields.axes[a])


@pytest.mark.parametrize("inputs, shape, message", [
    (("x",), (5,), "xdmf: the model has one input ['x']; XDMF is for 2-D and 3-D grids: use --format npz"),
    (("a", "b", "c", "d"), (2, 2, 2, 2), "xdmf: 4 inputs ['a', 'b', 'c', 'd']: XDMF grids have 2 or 3 axes"),
])
def test_xdmf_refuses_grids_it_cannot_draw(tmp_path, inputs, shape, message):
    with pytest.raises(ExportError) as err:
        write_xdmf(synthetic(inputs, shape), tmp_path / "s.xdmf")
    assert str(err.value).startswith(message)


def test_xdmf_refuses_uneven_spacing(tmp_path):
    fields = synthetic(("x", "y"), (4, 3))
    uneven = GridFields(fields.inputs, fields.outputs, (np.array([0.0, 0.1, 0.5, 1.0]), fields.axes[1]), fields.fields, 7)
    with pytest.raises(ExportError, match="the grid along 'x' is not uniformly spaced; use --format npz"):
        write_xdmf(uneven, tmp_path / "s.xdmf")


def test_npz_holds_axes_fields_and_names(tmp_path):
    fields = synthetic(("x", "y", "t"), (4, 3, 2))
    (path,) = write_npz(fields, tmp_path / "s.npz")
    data = np.load(path)
    assert list(data["inputs"]) == ["x", "y", "t"] and list(data["outputs"]) == ["u"] and int(data["step"]) == 7
    for a, name in enumerate(fields.inputs):
        np.testing.assert_array_equal(data[f"axis_{name}"], fields.axes[a])
    np.testing.assert_array_equal(data["u"], fields.fields["u"])
    np.testing.assert_array_equal(data["u_exact"], fields.fields["u_exact"])


# ----------------------------------------------------------------------------- through the CLI, on a run
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    data = {
        "problem": {"name": "poisson2d", "params": {"frequencies": [2.0]}},
        "decomposition": {"levels": 2}, "network": {"hidden": [8]},
        "sampling": {"method": "grid", "n": [10, 10], "test_n": [30, 20]},
        "train": {"steps": 30, "log_every": 30, "eval_every": 30, "compile": "off"},
        "run": {"name": "p4", "plots": False, "threads": 1, "output_dir": str(tmp / "runs"), "dtype": "float64"},
    }
    assert main(["train", str(write_yaml(tmp / "p4.yaml", data)), "--quiet"]) == 0
    return tmp / "runs" / "p4"


def test_export_xdmf_of_the_test_grid_equals_results_h5(run, capsys):
    assert main(["export", str(run), "--format", "xdmf"]) == 0
    assert capsys.readouterr().out.split() == ["wrote", str(run / "export" / "solution.xdmf"),
                                               "wrote", str(run / "export" / "solution.h5")]
    ((time, coords, values),) = read_xdmf(run / "export" / "solution.xdmf")
    with h5py.File(run / "results.h5", "r") as f:
        x, prediction, exact, error = (f[k][()] for k in ("x", "prediction", "exact", "error"))
    assert time is None and [len(c) for c in coords] == [20, 30]  # y (20 points) slowest, x along X
    np.testing.assert_allclose(coords[1], x[:, 0, 0], rtol=1e-12)
    np.testing.assert_allclose(coords[0], x[0, :, 1], rtol=1e-12)
    np.testing.assert_array_equal(values["u"], prediction[..., 0].T)
    np.testing.assert_array_equal(values["u_exact"], exact[..., 0].T)
    np.testing.assert_array_equal(values["u_error"], error[..., 0].T)


def test_export_npz_on_a_new_grid_equals_predict(run, tmp_path):
    out = tmp_path / "grid.npz"
    assert main(["export", str(run), "--format", "npz", "--n", "13,7", "--out", str(out)]) == 0
    data = np.load(out)
    model = ddpinn.load(run)
    assert data["axis_x"].shape == (13,) and data["axis_y"].shape == (7,) and int(data["step"]) == model.step
    gx, gy = np.meshgrid(data["axis_x"], data["axis_y"], indexing="ij")
    points = np.stack([gx.ravel(), gy.ravel()], axis=1)
    np.testing.assert_array_equal(data["u"], model.predict(points)[:, 0].reshape(13, 7))
    np.testing.assert_array_equal(data["u_exact"], model.exact(points)[:, 0].reshape(13, 7))
    np.testing.assert_array_equal(data["u_error"], data["u"] - data["u_exact"])
    assert data["axis_x"][0] == 0.0 and data["axis_x"][-1] == 1.0


def test_export_npz_of_the_test_grid_equals_results_h5(run, tmp_path):
    assert main(["export", str(run), "--format", "npz", "--out", str(tmp_path / "r.npz")]) == 0
    data = np.load(tmp_path / "r.npz")
    with h5py.File(run / "results.h5", "r") as f:
        np.testing.assert_array_equal(data["u"], f["prediction"][..., 0])
        np.testing.assert_array_equal(data["axis_y"], f["x"][0, :, 1])


def test_export_errors(run, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    assert main(["export", str(unfinished), "--format", "npz"]) == 2
    assert "results.h5 does not exist (the run has not finished); give --n N" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing"), "--format", "npz"]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["export", str(run), "--format", "npz", "--n", "4,4,4", "--out", str(tmp_path / "x.npz")]) == 2
    assert "--n: 3 counts for 2 inputs ['x', 'y']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(run), "--format", "npz", "--n", "0"])
    assert "need N or N1,N2,... (whole numbers >= 1" in capsys.readouterr().err
