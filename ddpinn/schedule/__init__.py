"""Subdomain schedules: at each Adam step every subdomain is active, fixed or off.

:mod:`ddpinn.schedule.base` defines the interface (:class:`SubdomainSchedule`, :class:`Role`),
:mod:`ddpinn.schedule.builtin` the built-ins (all-active, sweep, coarse-to-fine) and
:mod:`ddpinn.schedule.factory` :func:`make_schedule` (config -> checked schedule). Pure numpy; the
training side (dropped points, fixed contributions, masked Adam) lives in :mod:`ddpinn.train`.
"""

from ddpinn.schedule.base import Role, ScheduleContext, SubdomainSchedule, role_counts
from ddpinn.schedule.builtin import AllActive, CoarseToFine, Sweep
from ddpinn.schedule.factory import check_schedule, make_schedule, schedule_class

__all__ = [
    "AllActive",
    "CoarseToFine",
    "Role",
    "ScheduleContext",
    "SubdomainSchedule",
    "Sweep",
    "check_schedule",
    "make_schedule",
    "role_counts",
    "schedule_class",
]
