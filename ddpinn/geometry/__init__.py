"""Pure geometry: domains, multilevel decompositions, windows and point coverage.

Nothing here knows about processes; the partition and the model build on it.
"""

from ddpinn.geometry.coverage import CoverageError, LevelCoverage, cover_level, level_pairs
from ddpinn.geometry.decomposition import Block, Box, Decomposition, GeometryError, Level, multilevel, uniform_level
from ddpinn.geometry.windows import CosineWindow, SigmoidWindow, Window, WindowKind, make_window

__all__ = [
    "Block",
    "Box",
    "CosineWindow",
    "CoverageError",
    "Decomposition",
    "GeometryError",
    "Level",
    "LevelCoverage",
    "SigmoidWindow",
    "Window",
    "WindowKind",
    "cover_level",
    "level_pairs",
    "make_window",
    "multilevel",
    "uniform_level",
]
