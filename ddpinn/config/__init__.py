"""Run configuration: one YAML file describes a run completely.

:mod:`ddpinn.config.schema` is the config tree (sections, defaults, per-field validation);
:mod:`ddpinn.config.loader` reads YAML and ``--set`` overrides into it. Both are re-exported here.
"""

from ddpinn.config.loader import apply_overrides, convert_value, from_dict, load_config, to_dict
from ddpinn.config.schema import (
    Config,
    ConfigError,
    DecompositionConfig,
    LBFGSConfig,
    LevelConfig,
    NetworkConfig,
    OptimizerConfig,
    ParallelConfig,
    ProblemConfig,
    RunConfig,
    SamplingConfig,
    ScheduleConfig,
    TrainConfig,
)

__all__ = [
    "Config",
    "ConfigError",
    "DecompositionConfig",
    "LBFGSConfig",
    "LevelConfig",
    "NetworkConfig",
    "OptimizerConfig",
    "ParallelConfig",
    "ProblemConfig",
    "RunConfig",
    "SamplingConfig",
    "ScheduleConfig",
    "TrainConfig",
    "apply_overrides",
    "convert_value",
    "from_dict",
    "load_config",
    "to_dict",
]
