"""The config tree: one dataclass per section, each field with its type, default and docstring.

Defines :class:`Config`, its sections and :class:`ConfigError`. Each section validates its own
values in ``__post_init__`` (errors name the field's dotted path). Reading YAML and ``--set``
overrides into this tree lives in :mod:`ddpinn.config.loader`; ``ddpinn config`` renders the
docstrings (:mod:`ddpinn.config_reference`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "AdaptiveActivationConfig",
    "AdaptiveSamplingConfig",
    "BalancedConfig",
    "CausalConfig",
    "Config",
    "ConfigError",
    "DecompositionConfig",
    "FourierConfig",
    "LBFGSConfig",
    "LevelConfig",
    "LossConfig",
    "ModelConfig",
    "NetworkConfig",
    "OptimizerConfig",
    "ParallelConfig",
    "ProblemConfig",
    "RunConfig",
    "SamplingConfig",
    "ScheduleConfig",
    "SelfAdaptiveConfig",
    "SubdomainScheduleConfig",
    "TrainConfig",
]


class ConfigError(ValueError):
    """A config value that cannot work; the message starts with the field's dotted name."""


def _choice(where: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}")


def _positive(where: str, value: float | int, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok or (isinstance(value, float) and not math.isfinite(value)):
        raise ConfigError(f"{where}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")


@dataclass(kw_only=True, slots=True)
class ProblemConfig:
    name: str
    """Registered problem (``ddpinn problems`` lists them) or ``path/to/file.py:ClassName``."""
    params: dict[str, Any] = field(default_factory=dict)
    """Problem parameters (the problem dataclass's fields), e.g. ``{omega: 15}``."""
    conditioned: dict[str, list[float]] = field(default_factory=dict)
    """Parameters made input axes with a range, e.g. ``{omega: [5, 15]}``: one run learns the solution
    for every value in the range (evaluate it at any, e.g. ``ddpinn.load(run).predict`` with an
    omega column). The axes are appended after the problem's inputs; they are not decomposed (the
    decomposition describes the other axes; each level gets one subdomain spanning the range) and
    never cut by the process grid; ``sampling.n``/``test_n`` per axis include them. Only the
    parameters a problem lists in ``conditionable`` (cos1d: omega)."""


@dataclass(kw_only=True, slots=True)
class LevelConfig:
    """One level of an explicit decomposition."""

    subdomains: list[int] | int | None = None
    """Subdomains per axis (an int applies to every axis); centres are linspace over the domain."""
    centres: list[list[float]] | None = None
    """Explicit centres per axis (a list per axis); overrides ``subdomains``."""
    widths: list[float | list[float]] | float | None = None
    """Widths per axis (a number per axis, or a list per subdomain); default overlap × spacing."""
    overlap: float | None = None
    """Width / centre spacing for this level; defaults to ``decomposition.overlap``."""
    hidden: list[int] | None = None
    """Hidden layer sizes of this level's networks; defaults to ``network.hidden``."""

    def __post_init__(self) -> None:
        if self.subdomains is None and self.centres is None:
            raise ConfigError("decomposition.levels[]: give `subdomains` (per axis) or `centres`")
        counts = [self.subdomains] if isinstance(self.subdomains, int) else (self.subdomains or [])
        for n in counts:
            if n < 1:
                raise ConfigError(f"decomposition.levels[].subdomains: must be >= 1 per axis, got {self.subdomains}")
        if self.overlap is not None:
            _positive("decomposition.levels[].overlap", self.overlap)


@dataclass(kw_only=True, slots=True)
class DecompositionConfig:
    levels: int | list[LevelConfig] = 1
    """An int L gives the multilevel layout (level l has 2^(l-1) subdomains per axis); or a list
    of explicit levels."""
    overlap: float = 1.9
    """Subdomain width / centre spacing (> 1 for the windows to overlap)."""
    window: str = "cosine"
    """``cosine`` (default) or ``sigmoid``."""
    sigmoid_core: float = 0.5
    """Sigmoid window: half-width (in normalised units) where the window is ~1/2."""
    sigmoid_edge_value: float = 1e-3
    """Sigmoid window: value at the subdomain edge, where it is truncated."""

    def __post_init__(self) -> None:
        if isinstance(self.levels, int) and self.levels < 1:
            raise ConfigError(f"decomposition.levels: need at least 1 level, got {self.levels}")
        if isinstance(self.levels, list) and not self.levels:
            raise ConfigError("decomposition.levels: the list of levels is empty")
        _positive("decomposition.overlap", self.overlap)
        _choice("decomposition.window", self.window, ("cosine", "sigmoid"))
        if not 0 < self.sigmoid_core < 1:
            raise ConfigError(f"decomposition.sigmoid_core: must be in (0, 1), got {self.sigmoid_core}")
        if not 0 < self.sigmoid_edge_value < 0.5:
            raise ConfigError(f"decomposition.sigmoid_edge_value: must be in (0, 0.5), got {self.sigmoid_edge_value}")


@dataclass(kw_only=True, slots=True)
class FourierConfig:
    """Fourier-feature inputs: each subdomain network sees [sin(2πB x̂), cos(2πB x̂)] of its
    normalised input x̂ ∈ [-1, 1]^dim instead of x̂, B [features, dim] ~ N(0, sigma²) drawn per
    subdomain from the seed."""

    features: int = 16
    """m, frequencies per subdomain network (>= 1); the first dense layer sees 2m inputs."""
    sigma: float | list[float] = 1.0
    """Standard deviation of B's entries (> 0), in cycles per normalised unit: a subdomain of
    width w resolves about sigma·2/w cycles per unit length of x well. A list gives one per input
    axis, in the problem's input order (conditioned parameters last), e.g. ``[1, 4]`` for
    (x, omega) when the solution oscillates faster along omega than along x in a subdomain."""
    trainable: bool = False
    """Train B (per subdomain) with the weights; false keeps it fixed at its draw."""

    def __post_init__(self) -> None:
        if self.features < 1:
            raise ConfigError(
                f"network.fourier.features: need at least 1 frequency, got {self.features} "
                "(to switch Fourier features off, set network.fourier: null)"
            )
        if isinstance(self.sigma, list):
            if not self.sigma:
                raise ConfigError(
                    "network.fourier.sigma: the per-axis list is empty; give one value per input axis or a single number"
                )
            for i, value in enumerate(self.sigma):
                _positive(f"network.fourier.sigma[{i}]", value)
        else:
            _positive("network.fourier.sigma", self.sigma)


@dataclass(kw_only=True, slots=True)
class AdaptiveActivationConfig:
    """Locally adaptive activations (Jagtap, Kawaguchi, Karniadakis 2020): hidden units compute
    σ(n·a·z) with a trainable per subdomain, initialised to 1/n."""

    kind: str = "none"
    """``none``, ``layer`` (one a per hidden layer) or ``neuron`` (one a per hidden unit)."""
    scale: float = 10.0
    """n (> 0): scales a's gradient by n, so the slope adapts faster (the papers use n = 10)."""

    def __post_init__(self) -> None:
        _choice("network.adaptive_activation.kind", self.kind, ("none", "layer", "neuron"))
        _positive("network.adaptive_activation.scale", self.scale)


@dataclass(kw_only=True, slots=True)
class ModelConfig:
    """How the model's input derivatives are computed."""

    derivatives: str = "jets"
    """``jets``: exact forward-mode jets of every subdomain network (default). ``fd``: finite
    differences of u evaluated value-only at stencil points around each training point (central
    O(h²), one-sided at the domain's faces); the jets u, u_x, ... the residuals see are then
    approximations. Training and residual scoring only: test errors, plots and ``predict`` use
    the exact model."""
    fd_step: float = 0.01
    """h for ``derivatives: fd``, as a fraction of the finest subdomain width along each axis
    (h_a = fd_step · min over levels of the widths along axis a; 0.01: a step of 0.02 in the finest
    subdomains' normalised input x̂ ∈ [-1, 1]). Smaller: less truncation error (∝ h²), more rounding error (∝ ε/h^k
    for order k; float32 ε ≈ 1e-7)."""

    def __post_init__(self) -> None:
        _choice("model.derivatives", self.derivatives, ("jets", "fd"))
        if not (isinstance(self.fd_step, (int, float)) and math.isfinite(self.fd_step) and 0 < self.fd_step < 1):
            raise ConfigError(
                f"model.fd_step: the finite-difference step h must be in (0, 1) (a fraction of the finest "
                f"subdomain width), got {self.fd_step}"
            )


@dataclass(kw_only=True, slots=True)
class NetworkConfig:
    hidden: list[int] = field(default_factory=lambda: [16])
    """Hidden layer sizes of every subdomain network."""
    activation: str = "tanh"
    """``tanh`` or ``sin``."""
    output_mean: float | list[float] | None = None
    """Un-normalisation mean per output (default: the problem's)."""
    output_scale: float | list[float] | None = None
    """Un-normalisation scale per output (default: the problem's)."""
    output_levels: dict[str, list[int]] = field(default_factory=dict)
    """The levels (1-based) an output is made of, e.g. ``{u: [1, 2, 3]}`` to keep u off the finest
    level of four while k uses all: the output is the average over its own levels only. Outputs
    not named use every level. Every level still evaluates its networks for all outputs."""
    fourier: FourierConfig | None = None
    """Fourier-feature inputs, e.g. ``{features: 16, sigma: 5, trainable: false}``: each network
    sees [sin(2πB x̂), cos(2πB x̂)] of its normalised input x̂, B [features, dim] ~ N(0, sigma²) per
    subdomain (``trainable``: B is learnt too). ``sigma`` may be a list, one per input axis in the
    problem's input order (``[0.25, 3]`` for (x, omega): column a of B ~ N(0, sigma[a]²)). null: off."""
    adaptive_activation: AdaptiveActivationConfig = field(default_factory=AdaptiveActivationConfig)
    """Trainable activation slopes σ(n·a·z), per hidden layer or per unit of each subdomain network."""

    def __post_init__(self) -> None:
        if not self.hidden or min(self.hidden) < 1:
            raise ConfigError(f"network.hidden: need at least one hidden layer of size >= 1, got {self.hidden}")
        _choice("network.activation", self.activation, ("tanh", "sin"))


@dataclass(kw_only=True, slots=True)
class ScheduleConfig:
    kind: str = "constant"
    """``constant``, ``exponential`` (lr · decay^(step/decay_steps)) or ``cosine`` (to ``min_lr``)."""
    decay: float = 0.1
    """Exponential: factor applied over ``decay_steps``."""
    decay_steps: int | None = None
    """Exponential: steps over which lr is multiplied by ``decay`` (default: all Adam steps)."""
    min_lr: float = 0.0
    """Cosine: final learning rate."""
    warmup_steps: int = 0
    """Linear warm-up from 0 over this many steps."""

    def __post_init__(self) -> None:
        _choice("optimizer.schedule.kind", self.kind, ("constant", "exponential", "cosine"))
        _positive("optimizer.schedule.decay", self.decay)
        if self.decay_steps is not None:
            _positive("optimizer.schedule.decay_steps", self.decay_steps)
        _positive("optimizer.schedule.min_lr", self.min_lr, allow_zero=True)
        _positive("optimizer.schedule.warmup_steps", self.warmup_steps, allow_zero=True)


@dataclass(kw_only=True, slots=True)
class OptimizerConfig:
    lr: float = 1e-3
    """Adam learning rate."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """Adam (β1, β2)."""
    eps: float = 1e-8
    """Adam ε."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Learning-rate schedule over the Adam steps."""
    clip_norm: float | None = None
    """Clip the global gradient norm to this value (None: no clipping)."""

    def __post_init__(self) -> None:
        _positive("optimizer.lr", self.lr)
        _positive("optimizer.eps", self.eps)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optimizer.betas: need two values in [0, 1), got {self.betas}")
        if self.clip_norm is not None:
            _positive("optimizer.clip_norm", self.clip_norm)


@dataclass(kw_only=True, slots=True)
class LBFGSConfig:
    steps: int = 0
    """L-BFGS iterations after the Adam steps (0: none)."""
    history: int = 20
    """Number of correction pairs kept."""
    lr: float = 1.0
    """Initial step length of the backtracking line search."""

    def __post_init__(self) -> None:
        _positive("lbfgs.steps", self.steps, allow_zero=True)
        _positive("lbfgs.history", self.history)
        _positive("lbfgs.lr", self.lr)


@dataclass(kw_only=True, slots=True)
class AdaptiveSamplingConfig:
    """Residual-based collocation points (Wu et al. 2023): every ``every`` Adam steps, draw
    ``candidate_factor · n`` candidates with ``sampling.method``, score them by the PDE residual
    of the current model, and form the density p ∝ |r|^exponent / mean(|r|^exponent) + offset."""

    method: str = "none"
    """``none``, ``rad`` (replace all collocation points by n draws from p, without replacement)
    or ``rar_d`` (add the ``add`` candidates of highest p to the growing set)."""
    every: int = 1000
    """Adam steps between two resamplings."""
    candidate_factor: float = 10.0
    """Candidates drawn per resampling, as a multiple of the collocation points (>= 1)."""
    exponent: float = 1.0
    """a in |r|^a (>= 0; 0 gives uniform resampling)."""
    offset: float = 1.0
    """c added to the normalised density (>= 0; larger is closer to uniform)."""
    add: int = 10
    """``rar_d``: points added per resampling."""
    max_points: int | None = None
    """``rar_d``: stop adding once the collocation set has this many points (default: 2 n)."""

    def __post_init__(self) -> None:
        _choice("sampling.adaptive.method", self.method, ("none", "rad", "rar_d"))
        _positive("sampling.adaptive.every", self.every)
        if not (self.candidate_factor >= 1 and math.isfinite(self.candidate_factor)):
            raise ConfigError(f"sampling.adaptive.candidate_factor: must be >= 1, got {self.candidate_factor}")
        _positive("sampling.adaptive.exponent", self.exponent, allow_zero=True)
        _positive("sampling.adaptive.offset", self.offset, allow_zero=True)
        if self.exponent == 0 and self.offset == 0:
            raise ConfigError("sampling.adaptive.offset: with exponent 0 the density is 1 + offset; both 0 is 0/0")
        _positive("sampling.adaptive.add", self.add)
        if self.max_points is not None:
            _positive("sampling.adaptive.max_points", self.max_points)


@dataclass(kw_only=True, slots=True)
class SamplingConfig:
    method: str = "grid"
    """Collocation points: ``grid``, ``uniform`` (per cell), ``sobol``, ``halton``, ``lhs`` or
    ``hammersley``. ``lhs`` (Latin hypercube): n strata per axis, exactly one point in each, so
    every axis is evenly covered while the joint is random; use it for random points with even
    marginals. ``hammersley``: the Hammersley set (i/n, radical inverses in 2, 3, ...) shifted by
    a seeded random offset mod 1 per epoch; the lowest discrepancy for a fixed n (unlike Sobol it
    does not extend: another n is another set). Constraint faces use ``uniform`` for every method
    but ``grid``."""
    n: int | list[int] = 1000
    """Collocation points: a list gives points per axis (``[40, 40]``: 1,600 points); an integer is
    the total, which ``grid`` spreads over the axes in proportion to their lengths and rounds
    (``60`` on the unit square: an 8x8 grid, 64 points; the start-up line and ``ddpinn check``
    show the grid)."""
    resample_every: int = 0
    """Draw new collocation points every this many steps (0: never; not for ``grid``)."""
    test_n: int | list[int] = 1000
    """Test grid: points per axis (a list), or a total rounded to a grid as for ``n``."""
    test_chunk: int = 65536
    """Test points a rank evaluates at once: test errors and ``results.h5`` are computed chunk by
    chunk (and written to rank 0 chunk by chunk), so their memory is bounded by this, not by the
    grid. Larger chunks are fewer halo exchanges; smaller ones less memory per evaluation."""
    adaptive: AdaptiveSamplingConfig = field(default_factory=AdaptiveSamplingConfig)
    """Residual-based adaptive collocation points (RAD, RAR-D)."""

    def __post_init__(self) -> None:
        _choice("sampling.method", self.method, ("grid", "uniform", "sobol", "halton", "lhs", "hammersley"))
        for name in ("n", "test_n"):
            value = getattr(self, name)
            values = value if isinstance(value, list) else [value]
            if not values or min(values) < 1:
                raise ConfigError(f"sampling.{name}: need at least 1 point (per axis), got {value}")
        _positive("sampling.resample_every", self.resample_every, allow_zero=True)
        _positive("sampling.test_chunk", self.test_chunk)
        if self.resample_every and self.method == "grid":
            raise ConfigError(
                "sampling.resample_every: grid points never change; use uniform, sobol, halton, lhs or hammersley"
            )
        if self.adaptive.method != "none":
            if self.resample_every:
                raise ConfigError(
                    f"sampling.resample_every: {self.adaptive.method} draws new points itself every "
                    "sampling.adaptive.every steps; set resample_every to 0"
                )
            if self.method == "grid":
                raise ConfigError(
                    f"sampling.method: {self.adaptive.method} draws its candidates at random; "
                    "use uniform, sobol, halton, lhs or hammersley"
                )


@dataclass(kw_only=True, slots=True)
class SelfAdaptiveConfig:
    """Self-adaptive weights (McClenny & Braga-Neto): a trainable λ per collocation and soft
    constraint point, the loss term Σ m(λ_i) r_i² / N maximised over λ by Adam ascent."""

    mask: str = "square"
    """m(λ): ``square`` (λ²), ``softplus`` or ``identity`` (λ, kept >= 0)."""
    lr: float = 5e-3
    """Learning rate of the ascent on λ."""
    init: float = 1.0
    """Initial λ of every point (also of points added by resampling)."""

    def __post_init__(self) -> None:
        _choice("loss.self_adaptive.mask", self.mask, ("square", "softplus", "identity"))
        _positive("loss.self_adaptive.lr", self.lr)
        _positive("loss.self_adaptive.init", self.init)


@dataclass(kw_only=True, slots=True)
class BalancedConfig:
    """Balanced global term weights (Wang, Teng, Perdikaris; Wang et al. 2023): every ``every``
    steps, λ̂_t = Σ_s ‖∇L_s‖ / ‖∇L_t‖ from each term's gradient norm, λ ← α λ + (1 − α) λ̂."""

    every: int = 100
    """Adam steps between two updates of the weights."""
    momentum: float = 0.9
    """α of the moving average (0: take λ̂ as it is)."""

    def __post_init__(self) -> None:
        _positive("loss.balanced.every", self.every)
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"loss.balanced.momentum: must be in [0, 1), got {self.momentum}")


@dataclass(kw_only=True, slots=True)
class CausalConfig:
    """Causal weighting (Wang, Sankaran, Perdikaris 2024): the time axis is cut into ``chunks``;
    the residual weight of chunk i is exp(−ε Σ_{j<i} L_j), L_j the chunk's mean squared residual."""

    enabled: bool = False
    """Apply causal weights to the PDE residual (needs a time input)."""
    axis: str = "t"
    """The input axis that is time."""
    chunks: int = 16
    """Time chunks (>= 2)."""
    epsilon: float = 1.0
    """ε, the causality parameter (>= 0; 0 gives the plain loss)."""

    def __post_init__(self) -> None:
        if self.chunks < 2:
            raise ConfigError(f"loss.causal.chunks: need at least 2 time chunks, got {self.chunks}")
        _positive("loss.causal.epsilon", self.epsilon, allow_zero=True)


@dataclass(kw_only=True, slots=True)
class LossConfig:
    weighting: str = "fixed"
    """How loss terms are weighted: ``fixed`` (the problem's constraint weights), ``self_adaptive``
    (a trainable weight per point) or ``balanced`` (term weights from gradient norms)."""
    self_adaptive: SelfAdaptiveConfig = field(default_factory=SelfAdaptiveConfig)
    """Settings of ``self_adaptive``."""
    balanced: BalancedConfig = field(default_factory=BalancedConfig)
    """Settings of ``balanced``."""
    causal: CausalConfig = field(default_factory=CausalConfig)
    """Causal weights for time-dependent problems, combined with any weighting."""

    def __post_init__(self) -> None:
        _choice("loss.weighting", self.weighting, ("fixed", "self_adaptive", "balanced"))


@dataclass(kw_only=True, slots=True)
class SubdomainScheduleConfig:
    """Which subdomains train when (FBPINN schedulers). At each Adam step every subdomain is
    *active* (evaluated and trained), *fixed* (evaluated without gradient, parameters and Adam
    state frozen) or *off* (not evaluated); collocation points covered by no active subdomain are
    left out of the loss. L-BFGS after Adam trains every subdomain."""

    kind: str = "all_active"
    """``all_active`` (every subdomain trains at every step: the plain run), ``sweep``
    (time-marching: a band moving along ``axis``; subdomains whose centre the band has passed are
    fixed, those it has not reached are off), ``coarse_to_fine`` (level l switched on at
    ``starts[l]``) or your own scheduler, ``path/to/file.py:ClassName`` (a subclass of
    ``ddpinn.schedule.SubdomainSchedule`` implementing ``roles(step)`` and ``transitions()``)."""
    axis: str = "t"
    """Sweep: the input to sweep along (an input name of the problem, e.g. ``t``)."""
    width: float | None = None
    """Sweep: band width in units of ``axis`` (> 0); a subdomain is active while its centre lies
    in the band. Required for ``sweep``."""
    stride: float | None = None
    """Sweep: how far the band moves each time, in units of ``axis`` (> 0, at most ``width`` so that
    every centre is passed by the band; default: ``width``). The band stops once its upper end
    reaches the end of the axis."""
    every: int | None = None
    """Sweep: Adam steps between two moves of the band (default: ``train.steps`` spread evenly over
    the band positions)."""
    levels: list[int] | None = None
    """Sweep: the levels swept, numbered from 1 (default: all); the others stay active throughout."""
    starts: list[int] | None = None
    """Coarse-to-fine: per level, the Adam step at which it switches on (level 1 at 0, each below
    ``train.steps``). Required for ``coarse_to_fine``."""
    fix_coarser: bool = False
    """Coarse-to-fine: fix the coarser levels once a finer level switches on (only the finest
    started level trains); default: coarser levels keep training."""
    lr_factors: list[float] | None = None
    """Per level, a factor (> 0) on the learning rate (times ``optimizer.schedule``), for any kind
    but ``all_active`` (default: 1 for every level)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Your own scheduler: passed to it as ``context.params``."""

    def __post_init__(self) -> None:
        builtin = ("all_active", "sweep", "coarse_to_fine")
        if self.kind not in builtin and ":" not in self.kind:
            raise ConfigError(f"schedule.kind: {self.kind!r} is not one of {list(builtin)} nor a "
                              "'path/to/file.py:ClassName' scheduler")
        for name in ("width", "stride", "every"):
            if getattr(self, name) is not None:
                _positive(f"schedule.{name}", getattr(self, name))
        for name, value in (("levels", self.levels), ("starts", self.starts), ("lr_factors", self.lr_factors)):
            if value is not None and not value:
                raise ConfigError(f"schedule.{name}: the list is empty; remove it for the default")
        for level in self.levels or []:
            if level < 1:
                raise ConfigError(f"schedule.levels: levels are numbered from 1, got {level}")
        for start in self.starts or []:
            _positive("schedule.starts", start, allow_zero=True)
        for factor in self.lr_factors or []:
            _positive("schedule.lr_factors", factor)
        owners = {"width": "sweep", "stride": "sweep", "every": "sweep", "levels": "sweep",
                  "starts": "coarse_to_fine", "fix_coarser": "coarse_to_fine"}
        for name, owner in owners.items():
            if getattr(self, name) not in (None, False) and self.kind != owner:
                raise ConfigError(f"schedule.{name}: only used by kind {owner}, but schedule.kind is {self.kind!r}; "
                                  "remove it or set the kind")
        if self.lr_factors is not None and self.kind == "all_active":
            raise ConfigError("schedule.lr_factors: all_active takes the plain optimiser, which has no per-level "
                              "rates; remove lr_factors or choose another schedule.kind")
        if self.params and ":" not in self.kind:
            raise ConfigError(f"schedule.params: only for your own scheduler (kind 'file.py:ClassName'), not {self.kind!r}")


@dataclass(kw_only=True, slots=True)
class TrainConfig:
    steps: int = 1000
    """Adam steps."""
    log_every: int = 100
    """Print and record loss every this many steps."""
    eval_every: int = 1000
    """Evaluate the test errors every this many steps (0: only at the end)."""
    checkpoint_every: int = 0
    """Write a checkpoint every this many steps (0: only at the end)."""
    compile: str | bool = "auto"
    """``auto``: train eager for the first 30 steps, timing them, then compile the step
    (``torch.compile``) only if the expected saving over the steps left (a compiled step taken as
    half an eager one) exceeds the expected compile time: the time ddpinn recorded for this step
    beside torch's compile cache when that cache holds it (a few seconds), else a cold-cache
    estimate from the step's size (P4 L=4: 53 s; measured 39 s on a 2-core CPU with nothing else
    running). ``on``: compile at the first step. ``off``: never."""

    def __post_init__(self) -> None:
        _positive("train.steps", self.steps, allow_zero=True)
        _positive("train.log_every", self.log_every)
        _positive("train.eval_every", self.eval_every, allow_zero=True)
        _positive("train.checkpoint_every", self.checkpoint_every, allow_zero=True)
        if isinstance(self.compile, bool):  # YAML reads a bare on/off as a boolean
            self.compile = "on" if self.compile else "off"
        _choice("train.compile", self.compile, ("auto", "on", "off"))


@dataclass(kw_only=True, slots=True)
class RunConfig:
    name: str = "run"
    """Run name; the run directory is ``output_dir/name``."""
    output_dir: str = "runs"
    """Parent directory of run directories (relative to the working directory)."""
    seed: int = 0
    """Seed of initial weights and random collocation points."""
    device: str = "auto"
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (the local rank's GPU if there is one)."""
    dtype: str = "float32"
    """``float32`` or ``float64``."""
    threads: int | None = None
    """CPU threads per process. Default: ``OMP_NUM_THREADS`` if set, else the cores this process
    may use *less one*, divided among the ranks on the node (at least 1; 1 on a 2-core machine).
    The core left free keeps the step steady when another program is busy: a team of threads
    that needs every core waits at each of its hundreds of barriers per step for a thread the OS
    has set aside (P4 L=4 on 2 cores beside a busy process, eager: 13 ms per step with 1 thread,
    56 ms with 2; compiled: 6.5 ms and 28 ms, one run 950 ms). With nothing else running, one
    thread costs little here (compiled P4 L=4: 5.1 ms with 1 thread, 7.1 ms with 2). If you set
    more threads on a machine others use, also ``export OMP_WAIT_POLICY=PASSIVE`` before starting
    (idle threads sleep instead of spinning: 56 -> 16 ms in the case above)."""
    plots: bool = True
    """Write PNG plots at the end of training."""

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(f"run.name: must be a non-empty name without '/', got {self.name!r}")
        _choice("run.dtype", self.dtype, ("float32", "float64"))
        if not (self.device in ("cpu", "cuda", "auto") or self.device.startswith("cuda:")):
            raise ConfigError(f"run.device: {self.device!r} is not cpu, cuda, cuda:N or auto")
        if self.threads is not None:
            _positive("run.threads", self.threads)


@dataclass(kw_only=True, slots=True)
class ParallelConfig:
    level_policy: str | list[str] = "auto"
    """Per level ``replicated``, ``partitioned`` or ``auto`` (cost model), or one value for all."""
    comm: str = "auto"
    """Where messages go: ``torch`` (torch.distributed: nccl on GPU, gloo on CPU), ``gloo``
    (torch.distributed with gloo on any device: lets several ranks share one GPU, which NCCL
    refuses; the neighbour exchange goes through host memory), ``mpi`` (mpi4py; CPU only) or
    ``auto``: ``mpi`` for CPU runs launched by mpirun/mpiexec/srun --mpi when mpi4py is
    installed (an order of magnitude lower latency than gloo), else ``torch``."""
    launcher: str = "auto"
    """How ranks are found: ``auto`` (torchrun env, SLURM, Open MPI, MPICH/PMI, else one process),
    ``env``, ``slurm``, ``mpi`` or ``none``."""
    timeout_s: float = 300.0
    """Seconds a collective waits for a stuck or dead rank before the job stops with an error naming
    it; a rank that raises stops the others within about a second, whatever this is."""
    balance: str = "points"
    """How the process grid's cuts are placed: ``points`` (equal point counts) or ``uniform``."""
    partition_axes: str | list[str] = "auto"
    """Which inputs the process grid cuts, e.g. ``[x]``: ``auto`` cuts every input except those a
    ``schedule`` sweeps along (a time sweep: not t, so that no rank waits idle for the band),
    falling back to every input when the others have too few cells for the ranks."""
    rebalance_above: float | None = None
    """Adaptive sampling moves points between ranks: when, after a resampling, the largest rank's
    collocation points exceed this multiple of the mean (e.g. 1.3), re-cut the blocks at equal
    point counts and move subdomain networks, optimiser state and points to their new owners
    (through a checkpoint written at that step). None: never."""

    def __post_init__(self) -> None:
        policies = self.level_policy if isinstance(self.level_policy, list) else [self.level_policy]
        for p in policies:
            _choice("parallel.level_policy", p, ("auto", "replicated", "partitioned"))
        _choice("parallel.comm", self.comm, ("auto", "torch", "gloo", "mpi"))
        _choice("parallel.launcher", self.launcher, ("auto", "env", "slurm", "mpi", "none"))
        _positive("parallel.timeout_s", self.timeout_s)
        _choice("parallel.balance", self.balance, ("points", "uniform"))
        if self.partition_axes != "auto" and not (
            isinstance(self.partition_axes, list) and self.partition_axes
            and all(isinstance(a, str) for a in self.partition_axes)
        ):
            raise ConfigError(f"parallel.partition_axes: 'auto' or a non-empty list of input names such as [x], "
                              f"got {self.partition_axes!r}")
        if self.rebalance_above is not None and not (self.rebalance_above >= 1 and math.isfinite(self.rebalance_above)):
            raise ConfigError(f"parallel.rebalance_above: must be >= 1 (max / mean points per rank), got {self.rebalance_above}")


@dataclass(kw_only=True, slots=True)
class Config:
    problem: ProblemConfig
    """What to solve."""
    decomposition: DecompositionConfig = field(default_factory=DecompositionConfig)
    """Subdomains and windows."""
    network: NetworkConfig = field(default_factory=NetworkConfig)
    """Subdomain networks."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """How input derivatives are computed: exact jets or finite differences."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """Adam settings and schedule."""
    lbfgs: LBFGSConfig = field(default_factory=LBFGSConfig)
    """Optional L-BFGS refinement after Adam."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Collocation and test points."""
    loss: LossConfig = field(default_factory=LossConfig)
    """How the loss terms and their points are weighted."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Steps, logging, evaluation, checkpoints."""
    schedule: SubdomainScheduleConfig = field(default_factory=SubdomainScheduleConfig)
    """Which subdomains train when (all at once, a time-marching sweep, coarse to fine, your own)."""
    run: RunConfig = field(default_factory=RunConfig)
    """Output, seed, device, dtype."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Distributed settings (ignored on one process)."""

    def __post_init__(self) -> None:
        if self.train.steps + self.lbfgs.steps == 0:
            raise ConfigError("train.steps: zero steps in total; set train.steps (Adam) or lbfgs.steps > 0")
        if self.loss.weighting == "self_adaptive" and self.train.steps == 0:
            raise ConfigError(
                "loss.weighting: self_adaptive weights are learnt by ascent during the Adam steps; with "
                "train.steps 0 (L-BFGS only) they would stay at their initial value. Set train.steps > 0"
            )
        if self.schedule.kind != "all_active" and (self.loss.weighting == "self_adaptive" or self.sampling.adaptive.method != "none"):
            raise ConfigError(
                f"schedule.kind: {self.schedule.kind} drops the points no active subdomain covers, which per-point "
                "state (loss.weighting self_adaptive, sampling.adaptive) does not follow yet; use schedule.kind "
                "all_active with them"
            )
        if isinstance(self.parallel.level_policy, list) and isinstance(self.decomposition.levels, int):
            if len(self.parallel.level_policy) != self.decomposition.levels:
                raise ConfigError(
                    f"parallel.level_policy: {len(self.parallel.level_policy)} entries for "
                    f"{self.decomposition.levels} levels"
                )

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name
