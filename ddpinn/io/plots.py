"""PNG plots of a finished run, read back from its directory (so ``ddpinn plot RUN_DIR`` can
redraw them): the solution, exact solution and error; the decomposition with its windows; the
loss and test-error curves; and, for adaptive sampling, the collocation points at each
sampling event over the solution. Grids are read from ``results.h5`` with a stride, at most
:data:`IMAGE_AXIS_POINTS` per axis of an image (:data:`LINE_POINTS` along a 1-D line), so that
plotting a large grid reads only what the figure shows."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ddpinn.io.outputs import read_metrics

__all__ = ["plot_run", "read_strided", "IMAGE_AXIS_POINTS", "LINE_POINTS"]

IMAGE_AXIS_POINTS = 1000
"""Grid points read per image axis: a panel is about 460 pixels wide at the figures' size."""
LINE_POINTS = 10_000
"""Grid points read along a 1-D line plot (about 900 pixels wide)."""


def read_strided(dataset, index: tuple = ()) -> np.ndarray:
    """``dataset`` [*grid, k] of ``results.h5`` at ``index`` (a leading index: ints fix axes,
    slices are ignored), the remaining grid axes read with a stride: at most
    :data:`IMAGE_AXIS_POINTS` per axis for 2-D images, :data:`LINE_POINTS` for a 1-D line.
    Returns [*strided remaining grid axes, k]."""
    grid = dataset.shape[:-1]
    index = tuple(index) + (slice(None),) * (len(grid) - len(index))
    free = [a for a, i in enumerate(index) if isinstance(i, slice)]
    limit = LINE_POINTS if len(free) == 1 else IMAGE_AXIS_POINTS
    strided = tuple(slice(None, None, -(-grid[a] // limit)) if a in free else i for a, i in enumerate(index))
    return dataset[strided + (slice(None),)]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(run_dir: Path) -> list[Path]:
    """Write ``plots/solution.png``, ``plots/decomposition.png``, ``plots/curves.png`` and, when
    the run recorded its adaptive points, ``plots/points.png``."""
    try:
        plt = _pyplot()
    except ImportError:
        print("matplotlib is not installed; skipping plots (pip install 'ddpinn[plots]')")
        return []
    run_dir = Path(run_dir)
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    written = []
    if (run_dir / "results.h5").exists():
        written.append(_plot_solution(plt, run_dir / "results.h5", out / "solution.png"))
    written.append(_plot_decomposition(plt, run_dir, out / "decomposition.png"))
    metrics = read_metrics(run_dir / "metrics.jsonl")
    if metrics:
        written.append(_plot_curves(plt, metrics, out / "curves.png"))
    events = recorded_points(run_dir)
    if events and (run_dir / "results.h5").exists():
        written.append(_plot_points(plt, events, run_dir / "results.h5", out / "points.png"))
    return written


def recorded_points(run_dir: Path) -> dict[int, np.ndarray]:
    """Collocation points recorded at each sampling event (all ranks' files joined): event -> [n, dim]."""
    events: dict[int, list[np.ndarray]] = {}
    for path in sorted((Path(run_dir) / "points").glob("event_*_rank*.npy")):
        event = int(path.name.split("_")[1])
        events.setdefault(event, []).append(np.load(path))
    return {k: np.concatenate(v) for k, v in sorted(events.items())}


def _plot_points(plt, events: dict[int, np.ndarray], results: Path, target: Path) -> Path:
    """Up to six events (first, last and evenly between): the points over the predicted solution
    (2-D) or as a histogram over x (1-D)."""
    keys = list(events)
    shown = [keys[i] for i in sorted(set(np.linspace(0, len(keys) - 1, min(6, len(keys))).round().astype(int)))]
    with h5py.File(results, "r") as f:
        inputs = list(f.attrs["inputs"])
        two_d = f["x"].shape[-1] == 2
        x, pred = (read_strided(f["x"]), read_strided(f["prediction"])) if two_d else (None, None)
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.0), squeeze=False)
    for ax, event in zip(axes[0], shown):
        pts = events[event]
        if two_d:
            ax.pcolormesh(x[..., 0], x[..., 1], pred[..., 0], shading="auto", cmap="RdBu_r")
            ax.scatter(pts[:, 0], pts[:, 1], s=0.8, c="k", alpha=0.6, linewidths=0)
            ax.set_xlabel(inputs[0])
            ax.set_ylabel(inputs[1])
        else:
            ax.hist(pts[:, 0], bins=60, color="0.3")
            ax.set_xlabel(inputs[0])
        ax.set_title(f"event {event}: {len(pts)} points", fontsize=9)
    fig.suptitle("collocation points at each sampling event")
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


def _plot_solution(plt, path: Path, target: Path) -> Path:
    with h5py.File(path, "r") as f:
        inputs = list(f.attrs["inputs"])
        outputs = list(f.attrs.get("outputs", ["u"]))
        rel = f.attrs.get("rel_l2")
        # per-output errors (several outputs: a recovered coefficient field, say)
        output_rel = {name: f.attrs[f"rel_l2_{name}"] for name in outputs if f"rel_l2_{name}" in f.attrs}
        has_exact = "exact" in f
        grid = f["x"].shape[:-1]
        dim = len(grid)
        if dim <= 2:
            x, pred = read_strided(f["x"]), read_strided(f["prediction"])
            exact = read_strided(f["exact"]) if has_exact else None
            slices = [(x, pred, exact, "")]
        else:
            # Slices of the last axis at its start, middle and end (the axes between the first
            # two and the last at their first index).
            slices = []
            for k in sorted({0, grid[-1] // 2, grid[-1] - 1}):
                index = (slice(None),) * 2 + (0,) * (dim - 3) + (k,)
                sub_x = read_strided(f["x"], index)
                sub_e = read_strided(f["exact"], index) if has_exact else None
                label = f" at {inputs[-1]}={sub_x[0, 0, dim - 1]:.3g}"
                slices.append((sub_x, read_strided(f["prediction"], index), sub_e, label))
    title = f"rel L2 {rel:.2e}" if rel is not None else ""
    if dim == 1:
        x, pred, exact, _ = slices[0]
        fig, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True, height_ratios=[2, 1])
        axes[0].plot(x[:, 0], pred[:, 0], label="FBPINN", lw=1.5)
        if exact is not None:
            axes[0].plot(x[:, 0], exact[:, 0], "k--", label="exact", lw=1)
            axes[1].plot(x[:, 0], pred[:, 0] - exact[:, 0], "r", lw=1)
        axes[0].legend()
        axes[0].set_title(f"u({inputs[0]})  {title}")
        axes[1].set_ylabel("error")
        axes[1].set_xlabel(inputs[0])
    else:
        cols = 3 if has_exact else 1
        # one row per slice and output field (only u's, the first, for a 3-D problem's slices)
        rows = [(s, k) for s in slices for k in range(len(outputs) if dim == 2 else 1)]
        fig, axes = plt.subplots(len(rows), cols, figsize=(4.2 * cols, 3.6 * len(rows)), squeeze=False)
        for row, ((sx, sp, se, label), k) in enumerate(rows):
            extent = [sx[0, 0, 0], sx[-1, 0, 0], sx[0, 0, 1], sx[0, -1, 1]]
            if len(outputs) > 1 and dim == 2:
                label = f" {outputs[k]}" + (f" (rel L2 {output_rel[outputs[k]]:.2e})" if outputs[k] in output_rel else "")
            panels = [("FBPINN" + label, sp[..., k], "viridis")]
            if se is not None:
                vmax = np.abs(sp[..., k] - se[..., k]).max()
                panels += [("exact" + label, se[..., k], "viridis"), ("error" + label, sp[..., k] - se[..., k], "RdBu_r")]
            for col, (name, data, cmap) in enumerate(panels):
                ax = axes[row, col]
                kwargs = {"vmin": -vmax, "vmax": vmax} if name.startswith("error") and vmax > 0 else {}
                im = ax.imshow(data.T, origin="lower", extent=extent, cmap=cmap, aspect="auto", **kwargs)
                ax.set_title(name, fontsize=9)
                ax.set_xlabel(inputs[0])
                ax.set_ylabel(inputs[1])
                fig.colorbar(im, ax=ax, fraction=0.046)
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


def _plot_decomposition(plt, run_dir: Path, target: Path) -> Path:
    import torch
    from matplotlib.collections import PolyCollection

    from ddpinn.build import build_experiment
    from ddpinn.config import load_config
    from ddpinn.geometry import cover_level
    from ddpinn.jets import JetSpec

    exp = build_experiment(load_config(run_dir / "config.yaml"))
    dec, dim = exp.decomposition, exp.problem.dim
    spec = JetSpec.closure(dim, [])
    n_levels = dec.n_levels
    fig, axes = plt.subplots(1, n_levels, figsize=(3.6 * n_levels, 3.4), squeeze=False)
    names = exp.problem.inputs
    for l, level in enumerate(dec.levels):
        ax = axes[0, l]
        if dim == 1:
            x = np.linspace(dec.domain.lo[0], dec.domain.hi[0], 800)[:, None]
            cov = cover_level(level, torch.from_numpy(x), exp.window, spec)
            for j, sid in enumerate(cov.subdomain_ids.tolist()):  # a subdomain may span several rows
                real = cov.point_index[j] < x.shape[0]
                xs = x[cov.point_index[j][real].numpy(), 0]
                ax.plot(xs, cov.window[j, 0][real].numpy(), lw=0.8, color=f"C{sid % 10}")
            ax.set_xlabel(names[0])
            ax.set_ylabel("normalised window")
        else:
            n = 120
            g0 = np.linspace(dec.domain.lo[0], dec.domain.hi[0], n)
            g1 = np.linspace(dec.domain.lo[1], dec.domain.hi[1], n)
            mesh = np.stack(np.meshgrid(g0, g1, indexing="ij"), -1).reshape(-1, 2)
            pts = np.concatenate([mesh, np.tile(exp.decomposition.domain.centre[2:], (mesh.shape[0], 1))], axis=1)
            cov = cover_level(level, torch.from_numpy(pts), exp.window, spec)
            # Colour each point by its largest normalised window: 1 inside a subdomain's core, lower in overlaps.
            best = np.zeros(pts.shape[0])
            for j in range(cov.subdomain_ids.numel()):
                real = cov.point_index[j] < pts.shape[0]
                idx = cov.point_index[j][real].numpy()
                best[idx] = np.maximum(best[idx], cov.window[j, 0][real].numpy())
            ax.imshow(best.reshape(n, n).T, origin="lower", extent=[g0[0], g0[-1], g1[0], g1[-1]], cmap="magma", vmin=0, vmax=1)
            # One collection for all outlines: a patch per subdomain costs seconds per thousand.
            lo, hi = (np.asarray(v)[:, :2] for v in level.subdomain_boxes())
            corners = np.stack([lo, np.stack([hi[:, 0], lo[:, 1]], 1), hi, np.stack([lo[:, 0], hi[:, 1]], 1)], axis=1)
            ax.add_collection(PolyCollection(corners, facecolors="none", edgecolors="C0", linewidths=0.5, alpha=0.7))
            centres = level.subdomain_centres()
            ax.plot(centres[:, 0], centres[:, 1], ".", ms=2, color="C3")
            ax.set_xlim(dec.domain.lo[0], dec.domain.hi[0])
            ax.set_ylim(dec.domain.lo[1], dec.domain.hi[1])
            ax.set_xlabel(names[0])
            ax.set_ylabel(names[1])
        ax.set_title(f"level {l + 1}: {'x'.join(map(str, level.shape))} subdomains", fontsize=9)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


def _plot_curves(plt, metrics: list[dict], target: Path) -> Path:
    steps = [m["step"] for m in metrics]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].semilogy(steps, [m["loss"] for m in metrics], label="total")
    for name in metrics[0].get("terms", {}):
        if len(metrics[0]["terms"]) > 1:
            axes[0].semilogy(steps, [m["terms"][name] for m in metrics], lw=0.8, label=name)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("loss")
    axes[0].legend(fontsize=8)
    evals = [m for m in metrics if "rel_l2" in m]
    if evals:
        for key, label in (("rel_l2", "relative L2"), ("normalised_l1", "normalised L1")):
            axes[1].semilogy([m["step"] for m in evals], [m[key] for m in evals], "o-", ms=3, label=label)
        axes[1].legend(fontsize=8)
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("test error")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target
