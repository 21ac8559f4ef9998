"""Apply distribution to a plain :class:`~ddpinn.model.fbpinn.FBPINN`.

``parallelize_model(model, layout=..., comm=...)`` is the only place where the model meets
communication: it installs the halo exchange as the model's partial-sum reduction when some
level is partitioned (on one rank too, where the plan is empty, so that tests of one process
run the same path). The model module itself never imports
torch.distributed.
"""

from __future__ import annotations

from ddpinn.model.fbpinn import FBPINN
from ddpinn.parallel.comm import Communicator
from ddpinn.parallel.layout import ParallelLayout

__all__ = ["parallelize_model"]


def parallelize_model(model: FBPINN, *, layout: ParallelLayout, comm: Communicator) -> FBPINN:
    if layout.any_partitioned:
        from ddpinn.parallel.exchange.op import apply_halo_exchange

        apply_halo_exchange(model, comm)
    return model
