"""Fourier-feature inputs and adaptive activations of the subdomain networks (ddpinn/model/fourier.py,
the slopes in ddpinn/model/mlp.py): exact jets and parameter gradients against a literal scalar
reference differentiated by autograd, B independent of which subdomains a process holds, config
errors naming the field, parameter counts, training with each option, checkpoint round trips."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import full_spec, write_yaml

from ddpinn.build import build_experiment
from ddpinn.cli import main
from ddpinn.config import ConfigError, load_config
from ddpinn.jets import JetSpec
from ddpinn.model.activations import AdaptiveKind, AdaptiveSlope, make_activation
from ddpinn.model.fourier import FourierFeatures
from ddpinn.model.mlp import StackedMLP
from ddpinn.parallel.memory import saved_values_per_slot
from ddpinn.train.checkpoint import load_checkpoint, param_groups, restore

F64 = torch.float64


@dataclass(frozen=True)
class NetCase:
    sizes: tuple[int, ...]
    activation: str
    fourier: FourierFeatures | None = None
    adaptive: AdaptiveSlope | None = None


LAYER, NEURON = AdaptiveSlope(AdaptiveKind.LAYER, 10.0), AdaptiveSlope(AdaptiveKind.NEURON, 5.0)
CASES = {
    "fourier-fixed-tanh": NetCase((2, 6, 5, 1), "tanh", FourierFeatures(3, 1.5)),
    "fourier-trainable-sin": NetCase((2, 6, 1), "sin", FourierFeatures(4, 0.7, trainable=True)),
    "adaptive-layer-tanh": NetCase((2, 6, 5, 2), "tanh", adaptive=LAYER),
    "adaptive-neuron-sin": NetCase((2, 6, 5, 1), "sin", adaptive=NEURON),
    "fourier-and-neuron-tanh": NetCase((2, 5, 4, 1), "tanh", FourierFeatures(2, 1.0, trainable=True), NEURON),
    "fourier-per-axis-tanh": NetCase((2, 6, 5, 1), "tanh", FourierFeatures(3, (0.5, 3.0))),
}


def make_net(case: NetCase, n_subdomains: int = 3, seed: int = 0) -> StackedMLP:
    """A stacked network with its slopes moved away from n·a = 1 (so that a wrong slope shows)."""
    dim = case.sizes[0]
    net = StackedMLP(n_subdomains, case.sizes, make_activation(case.activation), F64,
                     fourier=case.fourier, adaptive=case.adaptive)
    net.initialise(seed, 0, np.arange(n_subdomains))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a in net.slopes:
            a.mul_(1 + 0.5 * torch.rand(a.shape, generator=generator, dtype=F64))
    assert net.sizes[0] == dim
    return net


def reference_network(net: StackedMLP, s: int, x: torch.Tensor, centre: torch.Tensor, inv_half_width: torch.Tensor):
    """Subdomain network ``s`` at physical points x ([n, dim] -> [n, n_out]), written literally:
    x̂ = (x - c)/(w/2); [sin(2πBx̂), cos(2πBx̂)]; hidden units σ(n·a·z)."""
    act = torch.tanh if net.activation.kind == "tanh" else torch.sin
    h = (x - centre) * inv_half_width
    if net.fourier is not None:
        theta = 2 * math.pi * h @ net.frequencies[s].T
        h = torch.cat([torch.sin(theta), torch.cos(theta)], dim=1)
    n_layers = len(net.weights)
    for k in range(n_layers):
        z = h @ net.weights[k][s].T + net.biases[k][s, :, 0]
        if k == n_layers - 1:
            return z
        if net.adaptive is not None:
            z = net.adaptive.scale * net.slopes[k][s, :, 0] * z
        h = act(z)


def graph_jets(fn, x: torch.Tensor, spec: JetSpec) -> torch.Tensor:
    """[n, J, n_out] jets of a point-wise fn by nested autograd, keeping the graph (so that the
    parameters' gradients can be taken through them)."""
    x = x.detach().clone().requires_grad_(True)
    rows = {(): fn(x)}
    for index in spec.indices[1:]:
        parent = rows[index[:-1]]
        cols = [torch.autograd.grad(parent[:, k].sum(), x, create_graph=True)[0][:, index[-1]]
                for k in range(parent.shape[1])]
        rows[index] = torch.stack(cols, dim=1)
    return torch.stack([rows[i] for i in spec.indices], dim=1)


def both_jets(net: StackedMLP, spec: JetSpec, n_points: int = 9, seed: int = 1):
    """(net.jets, reference) for every subdomain: each [S, J, n_out, P]."""
    generator = torch.Generator().manual_seed(seed)
    n_sub, dim = net.n_subdomains, net.sizes[0]
    centre = torch.rand(n_sub, dim, generator=generator, dtype=F64)
    inv_half_width = 0.5 + 2 * torch.rand(n_sub, dim, generator=generator, dtype=F64)
    x_norm = 2 * torch.rand(n_sub, dim, n_points, generator=generator, dtype=F64) - 1
    fast = net.jets(x_norm, inv_half_width, spec)
    reference = []
    for s in range(n_sub):
        x = centre[s] + x_norm[s].T / inv_half_width[s]  # the physical points of x_norm
        fn = lambda p, s=s: reference_network(net, s, p, centre[s], inv_half_width[s])  # noqa: E731
        reference.append(graph_jets(fn, x, spec).permute(1, 2, 0))
    return fast, torch.stack(reference)


SPECS_2D = {
    "values": JetSpec.closure(2, []),
    "first": JetSpec.closure(2, [(0,), (1,)]),
    "second-mixed": JetSpec.closure(2, [(0, 0), (0, 1), (1, 1)]),
}


@pytest.mark.parametrize("spec_name", list(SPECS_2D))
@pytest.mark.parametrize("case_name", list(CASES))
def test_jets_equal_autograd_of_the_scalar_reference(case_name, spec_name):
    fast, reference = both_jets(make_net(CASES[case_name]), SPECS_2D[spec_name])
    torch.testing.assert_close(fast, reference.detach(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case_name", list(CASES))
def test_third_order_jets_in_one_dimension(case_name):
    case = CASES[case_name]
    fourier = case.fourier
    if fourier is not None and isinstance(fourier.sigma, tuple):  # one σ per axis: keep the first axis's
        fourier = FourierFeatures(fourier.features, fourier.sigma[:1], fourier.trainable)
    net = make_net(NetCase((1, *case.sizes[1:]), case.activation, fourier, case.adaptive))
    fast, reference = both_jets(net, full_spec(1, 3))
    torch.testing.assert_close(fast, reference.detach(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case_name", list(CASES))
def test_parameter_gradients_equal_the_reference(case_name):
    """d/dθ of a random linear functional of all jets (value, first, second, mixed), for every
    parameter including B (trained) and the slopes a: the jet path against the literal network."""
    net = make_net(CASES[case_name])
    fast, reference = both_jets(net, SPECS_2D["second-mixed"])
    weights = torch.randn(fast.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    params = list(net.parameters())
    assert (net.fourier is not None and net.fourier.trainable) == any(p is net.frequencies for p in params)
    assert len(params) == 2 * len(net.weights) + len(net.slopes) + (net.fourier is not None and net.fourier.trainable)
    got = torch.autograd.grad((fast * weights).sum(), params)
    want = torch.autograd.grad((reference * weights).sum(), params)
    for g, w in zip(got, want):
        assert w.abs().max() > 0
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


def test_slope_gradient_matches_finite_differences():
    """The gradient w.r.t. one neuron's slope against a central difference of the jets."""
    net = make_net(CASES["adaptive-neuron-sin"])
    spec = SPECS_2D["second-mixed"]
    x_norm = torch.linspace(-1, 1, 12, dtype=F64).reshape(1, 2, 6).expand(3, -1, -1).contiguous()
    ihw = torch.full((3, 2), 1.7, dtype=F64)
    (grad,) = torch.autograd.grad(net.jets(x_norm, ihw, spec).sum(), net.slopes[1])
    eps = 1e-6
    with torch.no_grad():
        values = []
        for sign in (1, -1):
            net.slopes[1][2, 3, 0] += sign * eps
            values.append(net.jets(x_norm, ihw, spec).sum())
            net.slopes[1][2, 3, 0] -= sign * eps
    assert float(grad[2, 3, 0]) == pytest.approx(float(values[0] - values[1]) / (2 * eps), rel=1e-6)


def test_slopes_start_at_the_plain_activation():
    """n·a = 1 at initialisation: the adaptive network equals the plain one with the same weights."""
    plain = StackedMLP(2, (2, 6, 5, 1), make_activation("tanh"), F64)
    adaptive = StackedMLP(2, (2, 6, 5, 1), make_activation("tanh"), F64, adaptive=NEURON)
    plain.initialise(3, 1, np.array([4, 9]))
    adaptive.initialise(3, 1, np.array([4, 9]))
    x, ihw = torch.rand(2, 2, 5, dtype=F64), torch.ones(2, 2, dtype=F64)
    spec = SPECS_2D["second-mixed"]
    torch.testing.assert_close(adaptive.jets(x, ihw, spec), plain.jets(x, ihw, spec), rtol=1e-14, atol=1e-14)
    assert all(torch.all(a * NEURON.scale == 1) for a in adaptive.slopes)


def test_rows_pick_the_same_networks_as_slicing():
    """``rows`` selects stacked networks (B and slopes too): equal to the selected networks' jets."""
    net = make_net(CASES["fourier-and-neuron-tanh"], n_subdomains=4)
    x, ihw = torch.rand(2, 2, 5, dtype=F64), torch.rand(2, 2, dtype=F64) + 0.5
    spec = SPECS_2D["second-mixed"]
    picked = net.jets(x, ihw, spec, rows=torch.tensor([3, 1]))
    full = net.jets(torch.stack([x[1], x[1], x[1], x[0]]), torch.stack([ihw[1], ihw[1], ihw[1], ihw[0]]), spec)
    torch.testing.assert_close(picked, full[[3, 1]], rtol=0, atol=0)


def _saved_bytes(net: StackedMLP, spec: JetSpec, slots: int) -> int:
    """Bytes of the distinct storages autograd saves in one jets() call, plus its output."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    rows, dim = net.n_subdomains, net.sizes[0]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net.jets(torch.rand(rows, dim, slots, dtype=F64), torch.ones(rows, dim, dtype=F64), spec)
    storages[out.untyped_storage().data_ptr()] = out.untyped_storage().nbytes()
    return sum(storages.values())


@pytest.mark.parametrize("requested", [[], [(0,), (1,)], [(0, 0), (0, 1), (1, 1)]], ids=["values", "first", "second"])
@pytest.mark.parametrize("case_name", [name for name, case in CASES.items() if case.activation == "tanh"])
def test_memory_model_counts_what_autograd_keeps(case_name, requested):
    """The memory model's activations per slot (parallel/memory.py) with Fourier features and
    slopes: the storages autograd keeps grow per slot by exactly its count, plus x_norm where
    autograd keeps that too (it needs it for the gradient of the input layer's weights). The
    model counts tanh's saved tensors (sin keeps z instead of σ(z), and its jets path differs)."""
    case = CASES[case_name]
    net, spec = make_net(case), JetSpec.closure(2, requested)
    per_slot = (_saved_bytes(net, spec, 400) - _saved_bytes(net, spec, 200)) / (net.n_subdomains * 200 * 8)
    keeps_x_norm = case.fourier is None or case.fourier.trainable
    assert per_slot == saved_values_per_slot(case.sizes, spec, case.fourier) + 2 * keeps_x_norm


# ----------------------------------------------------------------------------- configs and counts
BASE = {
    "problem": {"name": "cos1d", "params": {"omega": 2.0}},
    "decomposition": {"levels": [{"subdomains": 6}], "overlap": 1.9},
    "network": {"hidden": [8]},
    "optimizer": {"lr": 1.0e-2},
    "sampling": {"method": "grid", "n": 120, "test_n": 200},
    "train": {"steps": 60, "log_every": 10, "eval_every": 60, "compile": "off"},
    "run": {"name": "run", "threads": 1, "plots": False, "dtype": "float64"},
}


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("network.fourier={features: 0, sigma: 1}", ["network.fourier.features: need at least 1 frequency", "got 0"]),
        ("network.fourier={features: 4, sigma: 0}", ["network.fourier.sigma: must be > 0, got 0"]),
        ("network.fourier={features: 4, sigma: -2}", ["network.fourier.sigma: must be > 0, got -2"]),
        ("network.fourier={features: 4, sigma: 1, bandwidth: 3}", ["network.fourier.bandwidth: unknown key"]),
        ("network.fourier={features: 4, sigma: [1, 0]}", ["network.fourier.sigma[1]: must be > 0, got 0"]),
        ("network.fourier={features: 4, sigma: []}", ["network.fourier.sigma: the per-axis list is empty"]),
        ("network.fourier={features: 4, sigma: [1, x]}", ["network.fourier.sigma[1]: expected float, got 'x'"]),
        ("network.adaptive_activation.kind=layers", ["network.adaptive_activation.kind: 'layers' is not one of"]),
        ("network.adaptive_activation.scale=0", ["network.adaptive_activation.scale: must be > 0, got 0"]),
    ],
)
def test_bad_network_options_are_config_errors_naming_the_field(override, fragments):
    with pytest.raises(ConfigError) as err:
        load_config(data=json.loads(json.dumps(BASE)), overrides=[override])
    for fragment in fragments:
        assert fragment in str(err.value)


def test_parameter_counts_follow_the_options_with_per_level_hidden_sizes():
    """Experiment.level_parameters (what the workload and memory models count) equals the model's
    trainable parameters, level by level, for per-level hidden sizes and both options."""
    data = json.loads(json.dumps(BASE))
    data["decomposition"]["levels"] = [{"subdomains": 1, "hidden": [5]}, {"subdomains": 4, "hidden": [7, 3]}]
    data["network"].update(fourier={"features": 3, "sigma": 1.0, "trainable": True},
                           adaptive_activation={"kind": "neuron"})
    exp = build_experiment(load_config(data=data))
    model = exp.make_model()
    for level, net in enumerate(model.nets):
        assert exp.level_parameters(level) == sum(p.numel() for p in net.parameters())
    # level 2: dense [6, 7, 3, 1] + B [3, 1] + slopes 7 + 3, per subdomain
    assert exp.level_parameters(1) == 4 * ((6 * 7 + 7) + (7 * 3 + 3) + (3 + 1) + 3 + 10)
    data["network"]["fourier"]["trainable"] = False
    data["network"]["adaptive_activation"]["kind"] = "layer"
    exp = build_experiment(load_config(data=data))
    assert exp.level_parameters(1) == 4 * ((6 * 7 + 7) + (7 * 3 + 3) + (3 + 1) + 2)
    assert exp.level_parameters(1) == sum(p.numel() for p in exp.make_model().nets[1].parameters())


def test_frequencies_do_not_depend_on_which_subdomains_a_process_holds():
    """B of a subdomain is a function of (seed, level, global id): the same in a model holding
    all subdomains and in one holding a subset (any rank count); different between subdomains."""
    data = json.loads(json.dumps(BASE))
    data["network"]["fourier"] = {"features": 5, "sigma": 2.0}
    exp = build_experiment(load_config(data=data))
    full = exp.make_model().nets[0].frequencies
    part = exp.make_model(held=[np.array([1, 4])]).nets[0].frequencies
    torch.testing.assert_close(part, full[[1, 4]], rtol=0, atol=0)
    assert not torch.equal(full[1], full[4])
    assert full.std().item() == pytest.approx(2.0, rel=0.3)


def test_per_axis_sigma_needs_one_value_per_input_axis():
    data = json.loads(json.dumps(BASE))
    data["network"]["fourier"] = {"features": 4, "sigma": [1.0, 2.0]}
    with pytest.raises(ConfigError, match=r"network\.fourier\.sigma: 2 per-axis values for 1 input axes \['x'\]"):
        build_experiment(load_config(data=data))


def test_per_axis_sigma_scales_the_columns_of_the_same_draws():
    """sigma [s_x, s_omega] gives column a of B = s_a times the standard draws: the isotropic B of
    sigma 1 rescaled per column; a list of equal values is the single number, bit for bit; and a
    subdomain's B is still the same in a model holding a subset of the subdomains."""
    data = json.loads(json.dumps(BASE))
    data["problem"] = {"name": "cos1d", "conditioned": {"omega": [5.0, 15.0]}}
    frequencies = {}
    for name, sigma in (("unit", 1.0), ("per_axis", [0.5, 4.0]), ("equal", [2.0, 2.0]), ("single", 2.0)):
        data["network"]["fourier"] = {"features": 64, "sigma": sigma}
        exp = build_experiment(load_config(data=data))
        frequencies[name] = exp.make_model().nets[0].frequencies
    assert frequencies["per_axis"].shape == (6, 64, 2)
    torch.testing.assert_close(frequencies["per_axis"], frequencies["unit"] * torch.tensor([0.5, 4.0], dtype=F64),
                               rtol=0, atol=0)
    assert torch.equal(frequencies["equal"], frequencies["single"])
    part = exp.make_model(held=[np.array([2, 5])]).nets[0].frequencies
    assert torch.equal(part, frequencies["single"][[2, 5]])
    spread = frequencies["per_axis"].std(dim=(0, 1))
    assert spread[0].item() == pytest.approx(0.5, rel=0.2) and spread[1].item() == pytest.approx(4.0, rel=0.2)


# ----------------------------------------------------------------------------- training and checkpoints
OPTIONS = {
    "fourier-fixed": {"fourier": {"features": 4, "sigma": 1.0}},
    "fourier-trainable": {"fourier": {"features": 4, "sigma": 1.0, "trainable": True}},
    "adaptive-layer": {"adaptive_activation": {"kind": "layer"}},
    "adaptive-neuron": {"adaptive_activation": {"kind": "neuron", "scale": 5.0}},
}


def train_run(tmp_path, option: str, **train) -> tuple:
    data = json.loads(json.dumps(BASE))
    data["network"].update(OPTIONS[option])
    data["train"].update(train)
    data["run"]["output_dir"] = str(tmp_path / "runs")
    config = write_yaml(tmp_path / "run.yaml", data)
    assert main(["train", str(config), "--quiet"]) == 0
    return config, tmp_path / "runs" / "run"


@pytest.mark.parametrize("option", list(OPTIONS))
def test_training_with_each_option_lowers_the_loss_and_moves_its_parameters(tmp_path, option):
    config, run_dir = train_run(tmp_path, option)
    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert losses[-1] < 0.5 * losses[0]
    ckpt = load_checkpoint(run_dir / "checkpoint.h5")
    exp = build_experiment(load_config(config))
    initial = exp.make_model().nets[0]
    trained, fixed = initial.checkpoint_tensors()
    for leaf, tensor in trained:  # every trained tensor moved, the new ones included
        assert not np.array_equal(ckpt.arrays[f"level_1/{leaf}"], tensor.detach().numpy()), leaf
    for leaf, tensor in fixed:  # fixed B stays what it was drawn as
        np.testing.assert_array_equal(ckpt.arrays[f"level_1/{leaf}"], tensor.numpy())
    assert {leaf for leaf, _ in trained + fixed} >= ({"B"} if "fourier" in option else {"a0"})


@pytest.mark.parametrize("option", ["fourier-trainable", "adaptive-neuron", "fourier-fixed"])
def test_checkpoint_round_trip_by_global_id(tmp_path, option):
    """The checkpoint restores B and the slopes (with their Adam state when trained) into a model
    holding any subset of the subdomains; the restored subset evaluates like the trained model."""
    config, run_dir = train_run(tmp_path, option, steps=20)
    ckpt = load_checkpoint(run_dir / "checkpoint.h5")
    exp = build_experiment(load_config(config))
    model = exp.make_model(held=[np.array([2, 5])])
    adam = torch.optim.Adam(model.parameters())
    restore(ckpt, param_groups(model, None, [True], True), adam)
    net = model.nets[0]
    for leaf, tensor in [*net.checkpoint_tensors()[0], *net.checkpoint_tensors()[1]]:
        np.testing.assert_array_equal(tensor.detach().numpy(), ckpt.arrays[f"level_1/{leaf}"][[2, 5]])
    if "trainable" in option:
        np.testing.assert_array_equal(adam.state[net.frequencies]["exp_avg"].numpy(),
                                      ckpt.arrays["level_1/adam_m/B"][[2, 5]])
        assert "level_1/adam_m/B" in ckpt.arrays
    elif "fourier" in option:
        assert "level_1/B" in ckpt.arrays and "level_1/adam_m/B" not in ckpt.arrays


def test_fixed_frequencies_come_from_the_checkpoint_not_the_seed(tmp_path):
    """run.seed may change on resume; the fixed B of the run must not: it is read back."""
    config, run_dir = train_run(tmp_path, "fourier-fixed", steps=10)
    ckpt = load_checkpoint(run_dir / "checkpoint.h5")
    other_seed = build_experiment(load_config(config, ["run.seed=7"])).make_model()
    assert not np.array_equal(other_seed.nets[0].frequencies.numpy(), ckpt.arrays["level_1/B"])
    restore(ckpt, param_groups(other_seed, None, [True], True), None)
    np.testing.assert_array_equal(other_seed.nets[0].frequencies.numpy(), ckpt.arrays["level_1/B"])


@pytest.mark.parametrize(
    "override, listed",
    [
        ("network.fourier.sigma=2.0", "network.fourier.sigma: 1.0 -> 2.0"),
        ("network.fourier.sigma=[1.0]", "network.fourier.sigma: 1.0 -> [1.0]"),
        ("network.adaptive_activation.kind=layer", 'network.adaptive_activation.kind: "none" -> "layer"'),
    ],
)
def test_resume_with_other_network_options_is_refused(tmp_path, capsys, override, listed):
    _, run_dir = train_run(tmp_path, "fourier-fixed", steps=10)
    assert main(["train", "--resume", str(run_dir), "--set", override]) == 2
    err = capsys.readouterr().err
    assert "defines another model than the checkpoint" in err and listed in err


@pytest.mark.parametrize("name", ["cos1d_w80", "cos1d_w80_fourier", "cos1d_w80_adaptive"])
def test_shipped_omega_80_configs_build(name):
    """The P1 ω = 80 configs load, build, and differ from the plain one only in the network."""
    root = Path(__file__).resolve().parents[1] / "configs"
    cfg, plain = load_config(root / f"{name}.yaml"), load_config(root / "cos1d_w80.yaml")
    exp = build_experiment(cfg)
    assert exp.problem.omega == 80 and exp.decomposition.levels[0].n_subdomains == 30
    assert (exp.fourier is not None) == name.endswith("fourier")
    assert (exp.adaptive is not None) == name.endswith("adaptive")
    for section in ("problem", "decomposition", "optimizer", "sampling", "train"):
        assert getattr(cfg, section) == getattr(plain, section), section
