# %% [markdown]
# # Using a trained ddpinn model from Python
#
# Notebook-style (`# %%` cells: run it in VS Code/Jupytext, or as a script):
#
#     python examples/using_a_trained_model.py [RUN_DIR]
#
# With a RUN_DIR that holds a trained run, the script loads it; otherwise it first trains a short
# version of `configs/poisson2d_L2_quick.yaml` (P4 with one frequency, 2 levels, 3,000 Adam steps,
# about 20 s on one CPU core) into RUN_DIR (default `runs/example_poisson2d`). Then it loads the
# model with `ddpinn.load`, evaluates it and its second derivatives at new points, compares
# with the exact solution and the PDE, and plots to `RUN_DIR/plots/example.png`.

# %% 1. A trained run
import sys
from pathlib import Path

import numpy as np

import ddpinn
from ddpinn.config import load_config
from ddpinn.session import run_training

ROOT = Path(__file__).resolve().parents[1]
run_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/example_poisson2d")
if not (run_dir / "checkpoint.h5").exists():
    cfg = load_config(ROOT / "configs" / "poisson2d_L2_quick.yaml", [
        "train.steps=3000", "sampling.test_n=[100,100]", "run.plots=false", "run.threads=1",
        f"run.output_dir={run_dir.parent}", f"run.name={run_dir.name}",
    ])
    run_training(cfg, quiet=True)

# %% 2. Load it: every subdomain on this process, whatever number of ranks trained it
model = ddpinn.load(run_dir)
print(model)
print("inputs", model.inputs, "outputs", model.outputs, "domain", model.domain.lo, model.domain.hi)

# %% 3. Values at new points, against the exact solution
rng = np.random.default_rng(0)
x = rng.uniform(model.domain.lo, model.domain.hi, size=(10_000, 2))  # [n, 2]: columns x, y
u = model.predict(x)  # [n, 1]
error = np.abs(u - model.exact(x)).max()
print(f"max |u - exact| on 10,000 new points: {error:.3e} (max |exact| {np.abs(model.exact(x)).max():.3f})")

# %% 4. Derivatives by name: the PDE -(u_xx + u_yy) = f at the same points
d = model.predict(x, derivatives=["u_xx", "u_yy"])  # {"u_xx": [n], "u_yy": [n]}
import torch  # the problem's source term is a torch function

f = model.problem.source(torch.from_numpy(x)).numpy().reshape(-1)
residual = -(d["u_xx"] + d["u_yy"]) - f
print(f"rel. PDE residual -(u_xx + u_yy) - f: {np.linalg.norm(residual) / np.linalg.norm(f):.3e}")

# %% 5. Plot the model, the exact solution and the error on a 200x200 grid
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

lines = [np.linspace(lo, hi, 200) for lo, hi in zip(model.domain.lo, model.domain.hi)]
gx, gy = np.meshgrid(*lines, indexing="ij")
grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
panels = {"ddpinn.load(...).predict": model.predict(grid), "exact": model.exact(grid)}
panels["error"] = panels["ddpinn.load(...).predict"] - panels["exact"]
fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
for ax, (title, values) in zip(axes, panels.items()):
    image = ax.pcolormesh(gx, gy, values.reshape(gx.shape), shading="auto", cmap="RdBu_r" if title == "error" else "viridis")
    ax.set(title=title, xlabel="x", ylabel="y", aspect="equal")
    fig.colorbar(image, ax=ax)
fig.tight_layout()
(run_dir / "plots").mkdir(exist_ok=True)
fig.savefig(run_dir / "plots" / "example.png", dpi=100)
print(f"wrote {run_dir / 'plots' / 'example.png'}")
