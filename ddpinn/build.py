"""From a validated :class:`~ddpinn.config.Config` to the run's objects, checking everything that
needs the problem or the geometry before any expensive work.

Defines :class:`Experiment` (problem, decomposition, window, derivative spec, network sizes,
dtype, device) with :func:`build_experiment`, and the point sets of a run
(:meth:`Experiment.training_points`, :meth:`Experiment.test_points`) for one ownership block.
Used by the trainer, the CLI and the distributed engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddpinn.config import Config, ConfigError, LevelConfig
from ddpinn.geometry import Block, Box, Decomposition, GeometryError, Level, Window, make_window, multilevel, uniform_level
from ddpinn.geometry.decomposition import with_parameter_axes
from ddpinn.jets import JetSpec
from ddpinn.model.activations import AdaptiveKind, AdaptiveSlope, make_activation
from ddpinn.model.fbpinn import FBPINN
from ddpinn.model.finite_difference import FiniteDifference
from ddpinn.model.fourier import FourierFeatures
from ddpinn.model.mlp import network_parameters
from ddpinn.problems import Face, Point, Points, Problem, ProblemError, make_problem
from ddpinn.problems.conditioned import condition
from ddpinn.sampling import PointGroup, SamplingMethod, sample_box
from ddpinn.schedule import SubdomainSchedule, make_schedule

__all__ = ["Experiment", "build_experiment", "resolve_device", "cell_grid"]


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks the local rank's GPU when CUDA is available, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("run.device: cuda requested but torch.cuda.is_available() is False; use cpu or auto")
        name = f"cuda:{local_rank % torch.cuda.device_count()}"
    return torch.device(name)


def cell_grid(decomposition: Decomposition, parameter_axes: Sequence[int] = ()) -> tuple[int, ...]:
    """Cells per axis of the fixed sampling/ownership grid: half the finest centre spacing of any
    level (so a block boundary can fall midway between two centres, which balances the owned
    subdomains and makes halos symmetric), and at least 16 so that levels with few subdomains
    can still be split by points. One cell along ``parameter_axes`` (conditioned inputs): every
    subdomain spans them, so a cut there would put every subdomain on each side of it."""
    return tuple(
        1 if a in parameter_axes else max(16, 2 * (max(level.shape[a] for level in decomposition.levels) - 1))
        for a in range(decomposition.domain.dim)
    )


def _level_from_config(domain: Box, lc: LevelConfig, overlap: float, where: str, dim: int) -> Level:
    overlap = lc.overlap if lc.overlap is not None else overlap
    if lc.centres is not None:
        if len(lc.centres) != dim:
            raise ConfigError(f"{where}.centres: need one list per axis ({dim}), got {len(lc.centres)}")
        centres = [np.asarray(c, dtype=np.float64) for c in lc.centres]
        if any(c.size == 0 for c in centres):
            raise ConfigError(f"{where}.centres: every axis needs at least one centre")
        widths = []
        for a, c in enumerate(centres):
            spacing = np.diff(np.sort(c)).mean() if c.size > 1 else domain.lengths[a]
            widths.append(np.full(c.size, overlap * spacing))
    else:
        shape = [lc.subdomains] * dim if isinstance(lc.subdomains, int) else list(lc.subdomains or [])
        if len(shape) != dim:
            raise ConfigError(f"{where}.subdomains: need one count per axis ({dim}), got {shape}")
        base = uniform_level(domain, shape, overlap)
        centres, widths = list(base.centres), list(base.widths)
    if lc.widths is not None:
        given = [lc.widths] * dim if isinstance(lc.widths, (int, float)) else list(lc.widths)
        if len(given) != dim:
            raise ConfigError(f"{where}.widths: need one value (or list) per axis ({dim}), got {lc.widths}")
        for a, w in enumerate(given):
            w = np.asarray(w, dtype=np.float64)
            if w.ndim == 1 and w.size != centres[a].size:
                raise ConfigError(f"{where}.widths[{a}]: {w.size} widths for {centres[a].size} centres")
            if np.any(w <= 0):
                raise ConfigError(f"{where}.widths[{a}]: widths must be positive, got {w.tolist()}")
            widths[a] = np.broadcast_to(w, centres[a].shape).copy()
    try:
        return Level(tuple(centres), tuple(widths))
    except GeometryError as err:
        raise ConfigError(f"{where}: {err}") from None


@dataclass(frozen=True, eq=False)
class Experiment:
    """Everything a run needs that follows from its config; identical on every process."""

    cfg: Config
    problem: Problem
    decomposition: Decomposition
    window: Window
    spec: JetSpec
    level_sizes: tuple[tuple[int, ...], ...]
    output_mean: tuple[float, ...]
    output_scale: tuple[float, ...]
    dtype: torch.dtype
    cells: tuple[int, ...]
    schedule: SubdomainSchedule
    """Which subdomains train at each step (``schedule:``); :class:`~ddpinn.schedule.AllActive` by default."""
    output_levels: tuple[tuple[bool, ...], ...] | None = None
    """``[l][k]``: level l makes up output k (``network.output_levels``); None: every level, every output."""

    def __post_init__(self) -> None:
        fd = self.finite_difference
        problem = None if fd is None else fd.check(self.spec)
        if problem is not None:
            raise ConfigError(f"model.fd_step: {problem}; lower model.fd_step (now {self.cfg.model.fd_step:g})")

    @property
    def finite_difference(self) -> FiniteDifference | None:
        """The finite differences of ``model.derivatives: fd`` (step h_a = fd_step · the finest
        subdomain width along axis a), or None for exact jets."""
        m = self.cfg.model
        if m.derivatives != "fd":
            return None
        domain = self.decomposition.domain
        finest = [min(float(level.widths[a].min()) for level in self.decomposition.levels) for a in range(domain.dim)]
        return FiniteDifference(tuple(m.fd_step * w for w in finest), domain.lo, domain.hi)

    @property
    def total_steps(self) -> int:
        return self.cfg.train.steps + self.cfg.lbfgs.steps

    @property
    def fourier(self) -> FourierFeatures | None:
        """The networks' Fourier-feature inputs (``network.fourier``); None when off."""
        f = self.cfg.network.fourier
        if f is None:
            return None
        return FourierFeatures(f.features, tuple(f.sigma) if isinstance(f.sigma, list) else f.sigma, f.trainable)

    @property
    def adaptive(self) -> AdaptiveSlope | None:
        """The networks' adaptive activation slopes (``network.adaptive_activation``); None when off."""
        a = self.cfg.network.adaptive_activation
        return None if a.kind == "none" else AdaptiveSlope(AdaptiveKind(a.kind), a.scale)

    def make_model(self, held: Sequence[np.ndarray] | None = None, device: torch.device | str = "cpu") -> FBPINN:
        """The FBPINN holding ``held[l]`` (global ids) of each level; all subdomains by default."""
        if held is None:
            held = [np.arange(level.n_subdomains) for level in self.decomposition.levels]
        model = FBPINN(
            held,
            self.level_sizes,
            make_activation(self.cfg.network.activation),
            output_mean=self.output_mean,
            output_scale=self.output_scale,
            seed=self.cfg.run.seed,
            dtype=self.dtype,
            fourier=self.fourier,
            adaptive=self.adaptive,
            output_levels=self.output_levels,
        )
        return model.to(device)

    def point_groups(self) -> list[PointGroup]:
        """The training point sets before they are drawn, one per loss term: ``pde``, then one per
        soft constraint (faces and points sampled like the collocation points, data sets given)."""
        s, domain = self.cfg.sampling, self.decomposition.domain
        method = SamplingMethod(s.method)
        groups = [PointGroup("pde", domain.lo, domain.hi, method, s.n, "pde")]
        for c in self.problem.constraints():
            where = c.where
            if isinstance(where, Points):
                x = where.x.detach().cpu().double().numpy().reshape(-1, self.problem.dim)
                groups.append(PointGroup(c.name, domain.lo, domain.hi, method, x.shape[0], "", given=x))
                continue
            lo, hi = list(domain.lo), list(domain.hi)
            if isinstance(where, Point):
                lo = hi = list(where.coords)
            elif isinstance(where, Face):
                a = self.problem.inputs.index(where.axis)
                lo[a] = hi[a] = domain.lo[a] if where.side == "lo" else domain.hi[a]
            face_method = SamplingMethod.GRID if method == SamplingMethod.GRID else SamplingMethod.UNIFORM
            groups.append(PointGroup(c.name, tuple(lo), tuple(hi), face_method, c.n_points, f"constraint/{c.name}"))
        return groups

    def training_points(self, epoch: int = 0, block: Block | None = None) -> dict[str, np.ndarray]:
        """Own points of each loss term (``pde`` then one group per soft constraint) in ``block``."""
        return {
            g.name: g.sample(seed=self.cfg.run.seed, epoch=epoch, cells=self.cells, block=block)
            for g in self.point_groups()
        }

    def observations(self, block: Block | None = None) -> dict[str, np.ndarray]:
        """Observed values of the soft constraints on :class:`Points` with values, restricted to
        ``block`` with the same mask as their points: name -> [n_own, k]."""
        out = {}
        for c in self.problem.constraints():
            if isinstance(c.where, Points) and c.where.values is not None:
                x = c.where.x.detach().cpu().double().numpy().reshape(-1, self.problem.dim)
                values = c.where.values.detach().cpu().double().numpy().reshape(x.shape[0], -1)
                out[c.name] = values if block is None else values[block.contains(x)]
        return out

    def test_points(self, block: Block | None = None) -> np.ndarray:
        """The regular test grid (``sampling.test_n``), restricted to ``block``: [n, dim]."""
        domain = self.decomposition.domain
        return sample_box(
            domain.lo, domain.hi, SamplingMethod.GRID, self.cfg.sampling.test_n, seed=0, stream="test", block=block
        )

    def level_parameters(self, level: int) -> int:
        """Trainable parameters of all subdomain networks of ``level`` together."""
        per_network = network_parameters(self.level_sizes[level], self.fourier, self.adaptive)
        return self.decomposition.levels[level].n_subdomains * per_network

    @property
    def collocation_count(self) -> int:
        """Global number of PDE collocation points (all processes together)."""
        from ddpinn.sampling import grid_shape

        s = self.cfg.sampling
        if s.method == SamplingMethod.GRID:
            return int(np.prod(grid_shape(self.decomposition.domain, s.n)))
        return s.n if isinstance(s.n, int) else int(np.prod(s.n))

    def test_shape(self) -> tuple[int, ...]:
        from ddpinn.sampling import grid_shape

        return grid_shape(self.decomposition.domain, self.cfg.sampling.test_n)

    def describe_points(self) -> str:
        """The collocation and test points as they will be, e.g. ``collocation 8x8 grid (64 points)``;
        says so when an integer total had to be rounded to fill a grid, so that a count given as a
        total is never silently changed."""
        from ddpinn.sampling import grid_shape

        s, domain = self.cfg.sampling, self.decomposition.domain

        def grid(field: str, n: int | list[int]) -> str:
            shape = grid_shape(domain, n)
            total = int(np.prod(shape))
            text = f"{'x'.join(map(str, shape))} grid ({total} points)"
            if isinstance(n, int) and total != n:
                text += (f" [sampling.{field} = {n} is a total, rounded to a grid in proportion to the axis lengths; "
                         f"give points per axis, e.g. {field}: {list(shape)}, for exact counts]")
            return text

        collocation = grid("n", s.n) if s.method == SamplingMethod.GRID else f"{self.collocation_count} {s.method} points"
        return f"collocation {collocation}; test {grid('test_n', s.test_n)}"


def build_experiment(cfg: Config, base_dir: Path | None = None) -> Experiment:
    """Resolve and cross-check the config: problem, decomposition (coverage), networks, points."""
    try:
        problem = make_problem(cfg.problem.name, cfg.problem.params, base_dir)
        if cfg.problem.conditioned:
            problem = condition(problem, cfg.problem.conditioned)
    except ProblemError as err:
        raise ConfigError(str(err)) from None
    domain = problem.domain()
    dim = problem.dim
    # The decomposition config describes the decomposed axes only; parameter inputs (conditioned
    # ones) get one subdomain spanning their range on every level, inserted afterwards.
    parameter_axes = [problem.inputs.index(name) for name in problem.parameter_inputs]
    decomposed = [a for a in range(dim) if a not in parameter_axes]
    space = Box(tuple(domain.lo[a] for a in decomposed), tuple(domain.hi[a] for a in decomposed))
    space_names = [problem.inputs[a] for a in decomposed]

    d = cfg.decomposition
    if isinstance(d.levels, int):
        decomposition = multilevel(space, d.levels, d.overlap)
        level_hidden = [cfg.network.hidden] * d.levels
    else:
        levels = [
            _level_from_config(space, lc, d.overlap, f"decomposition.levels[{i}]", len(decomposed))
            for i, lc in enumerate(d.levels)
        ]
        decomposition = Decomposition(space, tuple(levels))
        level_hidden = [lc.hidden or cfg.network.hidden for lc in d.levels]
    try:
        if isinstance(d.levels, int):
            for i, level in enumerate(decomposition.levels):
                level.check_covers(
                    space, f"decomposition.overlap: level {i + 1} of the multilevel layout", space_names,
                    hint=f"the overlap ({d.overlap:g}) must be greater than 1",
                )
        else:
            decomposition.validate(space_names)
    except GeometryError as err:
        raise ConfigError(str(err)) from None
    if parameter_axes:
        decomposition = with_parameter_axes(decomposition, domain, parameter_axes)
        cut = cfg.parallel.partition_axes
        if cut != "auto" and set(cut) & set(problem.parameter_inputs):
            raise ConfigError(
                f"parallel.partition_axes: {sorted(set(cut) & set(problem.parameter_inputs))} are parameter inputs, "
                f"which are never cut (every subdomain spans them); cut {space_names} instead"
            )

    window = make_window(
        d.window, **({"core": d.sigmoid_core, "edge_value": d.sigmoid_edge_value} if d.window == "sigmoid" else {})
    )
    n_out = len(problem.outputs)
    sizes = tuple(tuple([dim, *hidden, n_out]) for hidden in level_hidden)

    def per_output(value, default, name) -> tuple[float, ...]:
        value = default if value is None else value
        values = [float(value)] * n_out if isinstance(value, (int, float)) else [float(v) for v in value]
        if len(values) != n_out:
            raise ConfigError(f"network.{name}: {len(values)} values for {n_out} outputs {list(problem.outputs)}")
        return tuple(values)

    mean = per_output(cfg.network.output_mean, problem.output_mean, "output_mean")
    scale = per_output(cfg.network.output_scale, problem.output_scale, "output_scale")
    if any(not s > 0 for s in scale):
        raise ConfigError(f"network.output_scale: must be > 0, got {list(scale)}")

    output_levels = _output_levels(cfg.network.output_levels, problem.outputs, decomposition.n_levels)

    fourier = cfg.network.fourier
    if fourier is not None and isinstance(fourier.sigma, list) and len(fourier.sigma) != dim:
        raise ConfigError(
            f"network.fourier.sigma: {len(fourier.sigma)} per-axis values for {dim} input axes {list(problem.inputs)}; "
            "give one per axis in that order, or a single number for all"
        )

    s = cfg.sampling
    for name in ("n", "test_n"):
        value = getattr(s, name)
        if isinstance(value, list) and len(value) != dim:
            raise ConfigError(f"sampling.{name}: {len(value)} per-axis counts for {dim} axes {list(problem.inputs)}")
    causal = cfg.loss.causal
    if causal.enabled and causal.axis not in problem.inputs:
        raise ConfigError(
            f"loss.causal.axis: {causal.axis!r} is not an input of {cfg.problem.name} (inputs {list(problem.inputs)}); "
            "causal weighting needs a time input: set loss.causal.axis to it, or loss.causal.enabled: false"
        )
    if isinstance(cfg.parallel.level_policy, list) and len(cfg.parallel.level_policy) != decomposition.n_levels:
        raise ConfigError(
            f"parallel.level_policy: {len(cfg.parallel.level_policy)} entries for {decomposition.n_levels} levels"
        )
    schedule = make_schedule(cfg.schedule, decomposition, problem.inputs, cfg.train.steps, base_dir)
    return Experiment(
        cfg=cfg,
        problem=problem,
        decomposition=decomposition,
        window=window,
        spec=problem.jet_spec(),
        level_sizes=sizes,
        output_mean=mean,
        output_scale=scale,
        dtype=torch.float64 if cfg.run.dtype == "float64" else torch.float32,
        cells=cell_grid(decomposition, parameter_axes),
        schedule=schedule,
        output_levels=output_levels,
    )


def _output_levels(chosen: dict, outputs: tuple[str, ...], n_levels: int) -> tuple[tuple[bool, ...], ...] | None:
    """``network.output_levels`` (output name -> 1-based levels) as ``[level][output]`` flags, or
    None when every output uses every level."""
    flags = [[True] * len(outputs) for _ in range(n_levels)]
    for name, levels in chosen.items():
        if name not in outputs:
            raise ConfigError(f"network.output_levels: {name!r} is not an output of the problem (outputs {list(outputs)})")
        if (
            not isinstance(levels, list)
            or not levels
            or any(isinstance(l, bool) or not isinstance(l, int) or not 1 <= l <= n_levels for l in levels)
        ):
            raise ConfigError(
                f"network.output_levels.{name}: {levels!r} is not a non-empty list of levels 1..{n_levels} "
                f"(the decomposition has {n_levels}), e.g. [1, 2]"
            )
        k = outputs.index(name)
        for l in range(n_levels):
            flags[l][k] = l + 1 in levels
    return None if all(all(row) for row in flags) else tuple(tuple(row) for row in flags)
