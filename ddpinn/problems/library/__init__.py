"""The shipped problems (P1–P9 of the reference list, and equation discovery); importing this
registers them."""

from ddpinn.problems.library.allen_cahn import AllenCahn1D
from ddpinn.problems.library.burgers import Burgers1D
from ddpinn.problems.library.cos1d import Cos1D, MultiscaleCos1D
from ddpinn.problems.library.darcy import DarcyInverse
from ddpinn.problems.library.discovery import EquationDiscovery
from ddpinn.problems.library.harmonic import HarmonicInverse, HarmonicOscillator
from ddpinn.problems.library.heat import Heat2DMultiscale
from ddpinn.problems.library.helmholtz import Helmholtz2D
from ddpinn.problems.library.poisson import Poisson2D
from ddpinn.problems.library.wave import Wave1D

__all__ = [
    "AllenCahn1D",
    "Burgers1D",
    "Cos1D",
    "DarcyInverse",
    "EquationDiscovery",
    "HarmonicInverse",
    "HarmonicOscillator",
    "Heat2DMultiscale",
    "Helmholtz2D",
    "MultiscaleCos1D",
    "Poisson2D",
    "Wave1D",
]
