"""cws_actors.faults: fault injection and chaos runs. Crash, hang, slow down, drop, kill
and starve actors and plugins on purpose, to test that supervision, probes and callers
cope.

Public names (as :mod:`trio.testing` keeps trio's test aids apart, these are the
resilience-testing aids of :mod:`cws_actors`):

- :class:`FaultInjector`: a runtime's faults, as ``runtime.faults``. ``inject(target,
  spec)`` returns a :class:`FaultRecord`; ``list()``, ``get(id)``, ``clear(id)``,
  ``clear(target=...)``, ``clear()`` and ``firings()`` (a :class:`FaultFiring` log).
- :class:`FaultSpec`, :class:`FaultKind`, :func:`parse_fault_list`: what a fault does
  from and to a dict or the compact string syntax (:func:`parse_duration` reads its
  durations); :func:`compile_target` turns a target into a predicate on paths (at most
  :data:`MAX_TARGET_LENGTH` characters and :data:`MAX_TARGET_SEGMENTS` segments);
  :data:`LATENCY_DISTRIBUTIONS` names a latency's distributions.
- :class:`FaultRecord` (with its :class:`FaultState`): an injected fault, its id, target,
  spec, times and firing statistics, frozen at the moment it was asked for.
- :class:`InjectedFault`: the exception a ``crash`` or ``error_rate`` fault raises.
- :class:`ChaosPlan`, :class:`ChaosRun`, :class:`ChaosReport`: a seeded schedule of
  faults run against a set of actors, and what it found.
- :class:`FaultError` and its tree (``_exceptions``): :class:`FaultSpecError`,
  :class:`FaultTargetError` (ValueErrors) for bad specs and targets,
  :class:`ChaosPlanError` for bad plans, :class:`FaultNotFound` (a LookupError) for an
  unknown fault id, :class:`InjectedFault`.

A target is an actor path (``/plugins/aws``) or a glob over paths: ``*`` and ``?`` match
within one path segment, ``**`` any number of segments (``/plugins/*``, ``/**``). It may
name actors that do not exist yet: they get the fault when they are spawned.

What each kind does (message faults apply to tells, asks and bus events, never to the
probes' control messages; the faults on one actor apply in the order injected, and the
first that consumes the message ends the list):

- ``crash``: the handler raises InjectedFault before the actor sees the message; the
  asker gets HandlerFailed and the supervisor restarts the actor, as for any crash.
- ``hang``: the handler blocks until cancelled: a liveness probe fails and restarts it.
- ``latency``: a delay before the message is handled (fixed, uniform or exponential).
- ``error_rate``: the asker gets HandlerFailed (InjectedFault chained) without the actor
  seeing the message, and the actor is *not* restarted: it models a handler that
  reports an error (a 5xx from a cloud) rather than one that breaks. Use ``crash`` for
  crashes.
- ``drop``: the message vanishes and becomes a dead letter with reason ``fault``. An ask
  gets no reply, so it fails with AskTimeout at its deadline, as a lost message would
  (at once, if it has no deadline, so that nothing waits forever).
- ``slow_start``: a delay before each start of the actor (``on_start``).
- ``kill``, ``pause``, ``memory_hog``: only for subprocess plugins. SIGKILL (once, or
  every interval on a schedule counted from injection), SIGSTOP then SIGCONT, or a
  protocol request on which the plugin's process allocates until its memory limit ends
  it. The plugin's watcher sees the death and the supervisor restarts it.

Determinism: ``FaultInjector(seed=42)`` gives each fault, for each actor it reaches, its
own ``random.Random``, seeded from the injector's seed, the fault's id and the actor's
path, so that the same seed and the same injections (ids are ``f1``, ``f2``... unless
given) make the same firings: each actor's n-th message meets the same decision however
the scheduler interleaves the actors. Without a
seed the injector picks one (``injector.seed``), so that a run can be replayed.

Cost: with no fault on an actor, its cell pays one ``is not None`` check per message.

Inside: ``_exceptions``, ``_spec`` (the grammar) and ``_targets`` at the bottom;
``_records`` and ``_firing`` (the cell hooks) above them; ``_injector`` (the runtime's
hooks) and ``_chaos`` on top. The core reaches this package only through
``cws_actors._core._hooks``, and to make ``runtime.faults``.
"""

from ._chaos import ChaosPlan as ChaosPlan
from ._chaos import ChaosReport as ChaosReport
from ._chaos import ChaosRun as ChaosRun
from ._exceptions import ChaosPlanError as ChaosPlanError
from ._exceptions import FaultError as FaultError
from ._exceptions import FaultNotFound as FaultNotFound
from ._exceptions import FaultSpecError as FaultSpecError
from ._exceptions import FaultTargetError as FaultTargetError
from ._exceptions import InjectedFault as InjectedFault
from ._injector import FaultInjector as FaultInjector
from ._records import FaultFiring as FaultFiring
from ._records import FaultRecord as FaultRecord
from ._records import FaultState as FaultState
from ._spec import LATENCY_DISTRIBUTIONS as LATENCY_DISTRIBUTIONS
from ._spec import FaultKind as FaultKind
from ._spec import FaultSpec as FaultSpec
from ._spec import parse_duration as parse_duration
from ._spec import parse_fault_list as parse_fault_list
from ._targets import MAX_TARGET_LENGTH as MAX_TARGET_LENGTH
from ._targets import MAX_TARGET_SEGMENTS as MAX_TARGET_SEGMENTS
from ._targets import compile_target as compile_target

__all__ = [
    "ChaosPlan",
    "ChaosPlanError",
    "ChaosReport",
    "ChaosRun",
    "FaultError",
    "FaultFiring",
    "FaultInjector",
    "FaultKind",
    "FaultNotFound",
    "FaultRecord",
    "FaultSpec",
    "FaultSpecError",
    "FaultState",
    "FaultTargetError",
    "InjectedFault",
    "LATENCY_DISTRIBUTIONS",
    "MAX_TARGET_LENGTH",
    "MAX_TARGET_SEGMENTS",
    "compile_target",
    "parse_duration",
    "parse_fault_list",
]

for _name in __all__:  # report the public module in reprs and tracebacks (as trio does)
    _value = globals()[_name]
    if getattr(_value, "__module__", "").startswith(__name__ + "."):
        _value.__module__ = __name__
del _name, _value
