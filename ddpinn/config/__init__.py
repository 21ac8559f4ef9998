"""Run configuration: one YAML file describes a run completely.

:mod:`ddpinn.config.schema` is the config tree (sections, defaults, per-field validation);
:mod:`ddpinn.config.loader` reads YAML and ``--set`` overrides into it. Both are re-exported here.
"""

from ddpinn.config import loader, schema
from ddpinn.config.loader import *  # noqa: F403 - the package's API is its two modules' APIs
from ddpinn.config.schema import *  # noqa: F403

__all__ = [*schema.__all__, *loader.__all__]
