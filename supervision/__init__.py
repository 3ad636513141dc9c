"""supervision: OTP-grade supervisors for Trio, usable on their own.

This is the lowest layer of cws-actors; it knows nothing of actors, plugins or HTTP.
A child is an async function started like ``nursery.start``: it calls
``task_status.started(value)`` once ready. ``open_supervisor()`` owns children, restarts
them by strategy (one_for_one, one_for_all, rest_for_one), restart type, intensity and
backoff, drives their health probes, and stops them in reverse order.

Layers inside the package: ``_validate`` and ``_exceptions`` at the bottom; ``_probes``,
``_spec`` and ``_stats`` describe; ``_supervisor`` runs; ``_nested`` composes.
"""

from ._exceptions import ChildNotFound as ChildNotFound
from ._exceptions import ChildQuarantined as ChildQuarantined
from ._exceptions import ChildRunning as ChildRunning
from ._exceptions import ChildStartFailed as ChildStartFailed
from ._exceptions import DuplicateChild as DuplicateChild
from ._exceptions import RestartIntensityExceeded as RestartIntensityExceeded
from ._exceptions import SupervisionError as SupervisionError
from ._exceptions import SupervisorClosed as SupervisorClosed
from ._nested import supervisor_spec as supervisor_spec
from ._probes import Probe as Probe
from ._probes import ProbeKind as ProbeKind
from ._probes import ProbeStatus as ProbeStatus
from ._spec import Backoff as Backoff
from ._spec import ChildSpec as ChildSpec
from ._spec import Jitter as Jitter
from ._spec import OnExhausted as OnExhausted
from ._spec import Restart as Restart
from ._spec import Strategy as Strategy
from ._stats import ChildInfo as ChildInfo
from ._stats import ChildState as ChildState
from ._stats import ChildStatistics as ChildStatistics
from ._stats import ChildView as ChildView
from ._stats import ExitKind as ExitKind
from ._stats import ExitReason as ExitReason
from ._stats import SupervisorState as SupervisorState
from ._stats import SupervisorStatistics as SupervisorStatistics
from ._supervisor import Supervisor as Supervisor
from ._supervisor import open_supervisor as open_supervisor

__all__ = [
    "Backoff",
    "ChildInfo",
    "ChildNotFound",
    "ChildQuarantined",
    "ChildRunning",
    "ChildSpec",
    "ChildStartFailed",
    "ChildState",
    "ChildStatistics",
    "ChildView",
    "DuplicateChild",
    "ExitKind",
    "ExitReason",
    "Jitter",
    "OnExhausted",
    "Probe",
    "ProbeKind",
    "ProbeStatus",
    "Restart",
    "RestartIntensityExceeded",
    "Strategy",
    "SupervisionError",
    "Supervisor",
    "SupervisorClosed",
    "SupervisorState",
    "SupervisorStatistics",
    "open_supervisor",
    "supervisor_spec",
]
