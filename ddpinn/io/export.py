"""``ddpinn export``: a run's solution on a regular grid, for ParaView/VisIt (XDMF) or NumPy (npz).

Defines :class:`GridFields` (fields on a regular grid), its two sources :func:`fields_from_results`
(the test grid of ``results.h5``) and :func:`fields_from_model` (the trained model evaluated anew
through :mod:`ddpinn.api`), the writers :func:`write_npz` and :func:`write_xdmf`, and
:func:`export_run`, which the CLI calls.

Field names, in both formats: each output (``u``), and with an exact solution ``u_exact`` and
``u_error`` (prediction − exact), each a grid-shaped float64 array.

**npz**: ``axis_<input>`` [n_a] per-axis coordinates; each field [n_0, n_1, ...] indexed in
the order of the inputs (``u[i, j]`` is at ``axis_x[i], axis_y[j]``); ``inputs`` and ``outputs``
(string arrays) and ``step``.

**XDMF** (``.xdmf`` XML text next to an ``.h5`` file): XDMF lists a grid's dimensions slowest
first and its geometry as (Z, Y, X), so ParaView's X axis is the last one listed. The first
input is written as X, the second as Y, the third as Z: the HDF5 datasets hold the fields with
their axes reversed (``u[j, i]`` is at x_i, y_j), and the ``.h5`` also holds ``axes/<input>``.

* 2 or 3 inputs, none named ``t``, or ``t`` with one spatial input (``x, t`` as one 2-D
  space-time image, the usual view of a 1+1-D solution): one ``2DCoRectMesh`` /
  ``3DCoRectMesh`` grid, fields ``/<field>``.
* An input ``t`` with 2 or 3 spatial inputs: a temporal collection, one grid per time value over
  the spatial axes, fields ``/<field>/t_<k>`` (k = 0, 1, ...).
* One input: refused (an XDMF grid of one axis shows as nothing useful); use npz.

The grid spacing must be uniform per axis (CoRectMesh); the test grid always is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import h5py
import numpy as np

from ddpinn.sampling import grid_lines

__all__ = ["FORMATS", "ExportError", "GridFields", "export_run", "fields_from_model", "fields_from_results",
           "grid_counts", "write_npz", "write_xdmf"]

FORMATS = ("xdmf", "npz")
TIME_AXIS = "t"
"""The input name that makes an XDMF temporal collection."""


class ExportError(ValueError):
    """A run or an option that cannot be exported as asked; the message names the fix."""


@dataclass(frozen=True, eq=False)
class GridFields:
    """Fields on a regular grid: ``axes[a]`` [n_a] coordinates of input ``inputs[a]``;
    ``fields``: name -> [n_0, ..., n_{dim-1}] float64 (outputs, then ``<out>_exact`` and
    ``<out>_error`` when there is an exact solution); ``step``: the training step."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    axes: tuple[np.ndarray, ...]
    fields: dict[str, np.ndarray]
    step: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(a) for a in self.axes)


def _named_fields(outputs: tuple[str, ...], prediction: np.ndarray, exact: np.ndarray | None) -> dict[str, np.ndarray]:
    """[*grid, n_out] arrays -> one grid-shaped array per output (and its exact and error)."""
    fields = {name: prediction[..., k] for k, name in enumerate(outputs)}
    if exact is not None:
        fields.update({f"{name}_exact": exact[..., k] for k, name in enumerate(outputs)})
        fields.update({f"{name}_error": prediction[..., k] - exact[..., k] for k, name in enumerate(outputs)})
    return fields


def fields_from_results(path: Path) -> GridFields:
    """The test grid of a run's ``results.h5`` (its prediction, and exact and error if present)."""
    with h5py.File(path, "r") as f:
        inputs = tuple(str(v) for v in f.attrs["inputs"])
        outputs = tuple(str(v) for v in f.attrs["outputs"])
        x = f["x"]
        grid = x.shape[:-1]
        # One line of x per axis (the others held at index 0), not the whole [*grid, dim] array.
        axes = tuple(x[tuple(slice(None) if b == a else 0 for b in range(len(grid))) + (a,)] for a in range(len(grid)))
        prediction = f["prediction"][()]
        exact = f["exact"][()] if "exact" in f else None
        step = int(f.attrs["step"])
    return GridFields(inputs, outputs, axes, _named_fields(outputs, prediction, exact), step)


def fields_from_model(model, shape: tuple[int, ...]) -> GridFields:
    """``model`` (a :class:`~ddpinn.api.TrainedModel`) evaluated on the regular grid of ``shape``
    points per axis over its domain (the grid of ``sampling.test_n``), with the exact solution
    and the error when the problem has one."""
    dom = model.domain
    if len(shape) != len(dom.lo):
        raise ExportError(f"--n: {len(shape)} counts for {len(dom.lo)} inputs {list(model.inputs)}")
    axes = tuple(grid_lines(lo, hi, n) for lo, hi, n in zip(dom.lo, dom.hi, shape))
    mesh = np.meshgrid(*axes, indexing="ij")
    points = np.stack([m.reshape(-1) for m in mesh], axis=-1)
    prediction = model.predict(points).reshape(*shape, -1)
    exact = model.exact(points).reshape(*shape, -1) if model.has_exact else None
    return GridFields(model.inputs, model.outputs, axes, _named_fields(model.outputs, prediction, exact), model.step)


# ----------------------------------------------------------------------------- npz
def write_npz(fields: GridFields, path: Path) -> list[Path]:
    """``path`` (.npz) as described in the module docstring; returns the files written."""
    path = Path(path)
    arrays = {f"axis_{name}": axis for name, axis in zip(fields.inputs, fields.axes)}
    arrays.update(fields.fields)
    np.savez(path, inputs=np.array(fields.inputs), outputs=np.array(fields.outputs), step=np.int64(fields.step), **arrays)
    return [path]


# ----------------------------------------------------------------------------- XDMF
@dataclass(frozen=True)
class _Mesh:
    """One XDMF CoRectMesh over ``axes`` (input indices, first = X): the XML of its topology and
    geometry, dimensions listed slowest first."""

    dims: tuple[int, ...]
    origin: tuple[float, ...]
    spacing: tuple[float, ...]

    @classmethod
    def over(cls, fields: GridFields, axes: list[int]) -> _Mesh:
        reversed_axes = axes[::-1]
        return cls(
            dims=tuple(len(fields.axes[a]) for a in reversed_axes),
            origin=tuple(float(fields.axes[a][0]) for a in reversed_axes),
            spacing=tuple(_spacing(fields.inputs[a], fields.axes[a]) for a in reversed_axes),
        )

    def xml(self, indent: str) -> str:
        n = len(self.dims)
        kind = "ORIGIN_DXDY" if n == 2 else "ORIGIN_DXDYDZ"

        def item(name: str, values: tuple[float, ...]) -> str:
            text = " ".join(repr(v) for v in values)
            return (f'{indent}  <DataItem Name="{name}" Dimensions="{n}" NumberType="Float" Precision="8" '
                    f'Format="XML">{text}</DataItem>\n')

        return (
            f'{indent}<Topology TopologyType="{n}DCoRectMesh" Dimensions="{_dims(self.dims)}"/>\n'
            f'{indent}<Geometry GeometryType="{kind}">\n{item("Origin", self.origin)}{item("Spacing", self.spacing)}'
            f"{indent}</Geometry>\n"
        )


def _dims(shape: tuple[int, ...]) -> str:
    return " ".join(str(n) for n in shape)


def _spacing(name: str, axis: np.ndarray) -> float:
    """The uniform step of ``axis``; one point: 1 (any positive value draws the same)."""
    if axis.size == 1:
        return 1.0
    steps = np.diff(axis)
    if not np.allclose(steps, steps[0], rtol=1e-9, atol=0.0):
        raise ExportError(f"xdmf: the grid along {name!r} is not uniformly spaced; use --format npz")
    return float((axis[-1] - axis[0]) / (axis.size - 1))


def _attribute(name: str, h5_name: str, dataset: str, dims: tuple[int, ...], indent: str) -> str:
    return (
        f'{indent}<Attribute Name={quoteattr(name)} AttributeType="Scalar" Center="Node">\n'
        f'{indent}  <DataItem Dimensions="{_dims(dims)}" NumberType="Float" Precision="8" Format="HDF">'
        f"{escape(h5_name)}:{escape(dataset)}</DataItem>\n"
        f"{indent}</Attribute>\n"
    )


def _xdmf_layout(fields: GridFields) -> tuple[list[int], int | None]:
    """The input indices of the mesh axes (first = X) and of the time axis (None: no series)."""
    dim = len(fields.inputs)
    time = fields.inputs.index(TIME_AXIS) if TIME_AXIS in fields.inputs else None
    if time is not None and dim - 1 in (2, 3):
        return [a for a in range(dim) if a != time], time
    if dim in (2, 3):
        return list(range(dim)), None
    if dim == 1:
        raise ExportError(
            f"xdmf: the model has one input {list(fields.inputs)}; XDMF is for 2-D and 3-D grids: use --format npz"
        )
    raise ExportError(
        f"xdmf: {dim} inputs {list(fields.inputs)}: XDMF grids have 2 or 3 axes (plus a time input named "
        f"{TIME_AXIS!r}); use --format npz"
    )


def write_xdmf(fields: GridFields, path: Path) -> list[Path]:
    """``path`` (.xdmf) and the HDF5 file beside it (same name, .h5), as described in the
    module docstring; returns both paths."""
    xdmf_path = Path(path).with_suffix(".xdmf")
    h5_path = xdmf_path.with_suffix(".h5")
    mesh_axes, time = _xdmf_layout(fields)
    mesh = _Mesh.over(fields, mesh_axes)
    with h5py.File(h5_path, "w") as f:
        f.attrs.update(inputs=list(fields.inputs), outputs=list(fields.outputs), step=fields.step,
                       axis_order="fields hold the mesh axes reversed: the first input varies fastest (XDMF X)")
        for name, axis in zip(fields.inputs, fields.axes):
            f.create_dataset(f"axes/{name}", data=axis)
        for name, values in fields.fields.items():
            if time is None:
                f.create_dataset(name, data=values.transpose(mesh_axes[::-1]))
                continue
            # Time first, then the mesh axes reversed: slice k is the grid at time index k.
            series = values.transpose([time, *mesh_axes[::-1]])
            for k in range(series.shape[0]):
                f.create_dataset(f"{name}/t_{k}", data=series[k])
    h5_name = h5_path.name  # relative: the pair can be moved together

    def grid(name: str, indent: str, suffix: str, time_value: float | None) -> str:
        attributes = "".join(_attribute(field, h5_name, f"/{field}{suffix}", mesh.dims, indent + "  ")
                             for field in fields.fields)
        when = "" if time_value is None else f'{indent}  <Time Value="{time_value!r}"/>\n'
        return (f'{indent}<Grid Name={quoteattr(name)} GridType="Uniform">\n{when}{mesh.xml(indent + "  ")}'
                f"{attributes}{indent}</Grid>\n")

    if time is None:
        body = grid("solution", "    ", "", None)
    else:
        slices = "".join(grid(f"t_{k}", "      ", f"/t_{k}", float(value)) for k, value in enumerate(fields.axes[time]))
        body = f'    <Grid Name="solution" GridType="Collection" CollectionType="Temporal">\n{slices}    </Grid>\n'
    xdmf_path.write_text(
        '<?xml version="1.0" ?>\n<Xdmf Version="3.0">\n  <Domain>\n' + body + "  </Domain>\n</Xdmf>\n"
    )
    return [xdmf_path, h5_path]


# ----------------------------------------------------------------------------- the command
def grid_counts(text: str) -> tuple[int, ...]:
    """``--n``: ``N`` (points per axis, every axis) or ``N1,N2,...`` (one per axis)."""
    try:
        counts = tuple(int(v) for v in text.split(","))
    except ValueError:
        counts = ()
    if not counts or any(n < 1 for n in counts):
        raise ExportError(f"need N or N1,N2,... (whole numbers >= 1 of grid points per axis), got {text!r}")
    return counts


def export_run(run_dir: Path, fmt: str, *, out: Path | None = None, n: tuple[int, ...] | None = None,
               device: str = "cpu") -> list[Path]:
    """Write the run's solution as ``fmt`` (``xdmf`` or ``npz``) to ``out`` (default
    ``RUN_DIR/export/solution.<fmt>``): the test grid of ``results.h5``, or, with ``n``, the
    model evaluated anew on a grid of ``n`` points per axis (one count: every axis)."""
    run_dir = Path(run_dir)
    if fmt not in FORMATS:
        raise ExportError(f"--format: {fmt!r} is not one of {list(FORMATS)}")
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir} is not a directory; give the run directory `ddpinn train` wrote")
    if n is None:
        results = run_dir / "results.h5"
        if not results.exists():
            raise ExportError(
                f"{results} does not exist (the run has not finished); give --n N to evaluate its checkpoint on a grid"
            )
        fields = fields_from_results(results)
    else:
        from ddpinn.api import load

        model = load(run_dir, device=device)
        shape = n * len(model.inputs) if len(n) == 1 else n
        fields = fields_from_model(model, tuple(shape))
    target = Path(out) if out is not None else run_dir / "export" / f"solution.{fmt}"
    target.parent.mkdir(parents=True, exist_ok=True)
    return write_xdmf(fields, target) if fmt == "xdmf" else write_npz(fields, target.with_suffix(".npz"))
