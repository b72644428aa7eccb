"""The per-device session: a pure transition function over explicit states and events.

Theory of operation
===================

Rules of this module (keep them when you change it):

1. **All session transition logic lives here.** The job runtime never assigns ``state`` itself; it
   builds an event and calls :func:`step`.
2. **No clock reads, no I/O, no randomness.** Time arrives as ``now`` on every event (any
   monotonic float the caller likes); ticket numbers and task ids are chosen by the caller. The
   same session and event always give the same result, which is what lets the Hypothesis state
   machine replay a failure as a list of steps.
3. **Sessions are immutable.** :func:`step` returns a new :class:`DeviceSession` (built through
   ``attrs.evolve``, so it is re-validated) or raises :class:`~protocol.InvalidTransition`. The
   caller's session is untouched either way: "illegal transitions raise an error and nothing
   happens" (h11).

One session tracks one device inside one job. Its life, as EDIP §5 and §9.6 describe it::

                      Polled                         Polled                  Polled
                     ┌──────┐                       ┌──────┐                ┌──────┐
                     v      |     Selected(ticket)  v      |  TaskDelivered v      |
    (first poll) -> AVAILABLE ───────────────────> SELECTED ─────────────> TRAINING
                     ^  ^  ^                          |                      |  |
                     |  |  └── TicketExpired/Released ┘                      |  |
                     |  └────────── Reported(task_id) / TicketExpired / Released  |
                     |                                                          |
                     └── Polled ── GONE <── DeviceExpired (from any live state) ┘

* A device exists for the job once it has polled ``/task`` (EDIP §5.2: it must poll once before it
  can be selected), so sessions start in ``AVAILABLE`` (:meth:`DeviceSession.new`).
* ``Selected`` gives it a *ticket* (the ``device_selection_id`` of its cookie). Tickets given to one
  device strictly increase, so a device is never handed a ticket it already had; this is what
  avoids the reference's dead slot when a device is re-selected at the same version (EDIP R32).
* ``TaskDelivered`` records the task id and the model version actually handed out (staleness is
  measured from that version, EDIP §5.2), for the ticket the device holds.
* ``Reported`` with the open task's id closes the task and counts the report. A report for any
  other task (or with no task open) is illegal; the server still answers ``OK`` and discards it
  (EDIP §3.3), but the session does not move.
* ``TicketExpired`` (the selection or the training took too long, see :func:`expiry_event`) and
  ``Released`` (the runtime withdraws the selection, e.g. the job stops) return the device to the
  pool. A late report after that is illegal, as above. ``DeviceExpired`` marks a device that has
  not polled for too long as ``GONE``; its next poll revives it.
* ``Polled`` is legal in every state and only refreshes ``last_seen`` (and the platform, when the
  request revealed one): a device that polls again before reporting keeps its task (EDIP V3).

Which events each state accepts is the data in :data:`TRANSITIONS`; the few guards that do not fit
a table (ticket order, matching ticket/task ids) are plain code in :func:`step`. Anything else
raises :class:`~protocol.InvalidTransition`, whose ``status_hint`` is 409.
"""

from __future__ import annotations

import enum
import math
from typing import TYPE_CHECKING, Any, Final, TypeAlias, assert_never

import attrs
from attrs import validators as v

from ._errors import InvalidTransition
from ._messages import Platform
from ._values import INT64_MAX

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "TRANSITIONS",
    "DeviceExpired",
    "DeviceSession",
    "Polled",
    "Released",
    "Reported",
    "Selected",
    "SessionEvent",
    "SessionState",
    "TaskDelivered",
    "TicketExpired",
    "expiry_event",
    "step",
]


class SessionState(enum.Enum):
    """Where one device stands in one job."""

    AVAILABLE = "available"
    """Has polled at least once; may be selected."""
    SELECTED = "selected"
    """Holds a ticket; its next poll should get a task."""
    TRAINING = "training"
    """A task was delivered; a report is awaited."""
    GONE = "gone"
    """Expired after a long silence; a poll revives it."""


def _check_now(_inst: object, attribute: attrs.Attribute[float], value: object) -> None:
    if type(value) not in (int, float) or not math.isfinite(value):  # type: ignore[arg-type]
        raise ValueError(f"{attribute.name} must be a finite number, got {value!r}")


def _check_positive_int(_inst: object, attribute: attrs.Attribute[int], value: object) -> None:
    if type(value) is not int or not 1 <= value <= INT64_MAX:
        raise ValueError(f"{attribute.name} must be an integer >= 1, got {value!r}")


def _check_nonempty_str(_inst: object, attribute: attrs.Attribute[str], value: object) -> None:
    if type(value) is not str or not value:
        raise ValueError(f"{attribute.name} must be a non-empty string, got {value!r}")


# ---------------------------------------------------------------------------------------------
# events


@attrs.frozen(kw_only=True)
class Polled:
    """The device called ``/task`` (``platform``: what this request revealed, if anything)."""

    now: float = attrs.field(validator=_check_now)
    platform: Platform | None = attrs.field(
        default=None, validator=v.optional(v.instance_of(Platform))
    )


@attrs.frozen(kw_only=True)
class Selected:
    """The selector picked the device; ``ticket`` becomes its ``device_selection_id``."""

    ticket: int = attrs.field(validator=_check_positive_int)
    now: float = attrs.field(validator=_check_now)


@attrs.frozen(kw_only=True)
class TaskDelivered:
    """An ``OK`` task reply went out for ``ticket``, with this task id and model version."""

    ticket: int = attrs.field(validator=_check_positive_int)
    task_id: str = attrs.field(validator=_check_nonempty_str)
    model_version: int = attrs.field(validator=_check_positive_int)
    now: float = attrs.field(validator=_check_now)


@attrs.frozen(kw_only=True)
class Reported:
    """A ``/result`` arrived for ``task_id``."""

    task_id: str = attrs.field(validator=_check_nonempty_str)
    now: float = attrs.field(validator=_check_now)


@attrs.frozen(kw_only=True)
class TicketExpired:
    """The ticket (or the task delivered for it) outlived its deadline."""

    now: float = attrs.field(validator=_check_now)


@attrs.frozen(kw_only=True)
class Released:
    """The runtime withdrew the device's ticket (job stopped, selection reset, ...)."""

    now: float = attrs.field(validator=_check_now)


@attrs.frozen(kw_only=True)
class DeviceExpired:
    """The device has been silent for too long."""

    now: float = attrs.field(validator=_check_now)


SessionEvent: TypeAlias = (
    Polled | Selected | TaskDelivered | Reported | TicketExpired | Released | DeviceExpired
)

_S = SessionState

TRANSITIONS: Final[Mapping[SessionState, Mapping[type[SessionEvent], SessionState]]] = {
    _S.AVAILABLE: {
        Polled: _S.AVAILABLE,
        Selected: _S.SELECTED,
        DeviceExpired: _S.GONE,
    },
    _S.SELECTED: {
        Polled: _S.SELECTED,
        TaskDelivered: _S.TRAINING,
        TicketExpired: _S.AVAILABLE,
        Released: _S.AVAILABLE,
        DeviceExpired: _S.GONE,
    },
    _S.TRAINING: {
        Polled: _S.TRAINING,
        Reported: _S.AVAILABLE,
        TicketExpired: _S.AVAILABLE,
        Released: _S.AVAILABLE,
        DeviceExpired: _S.GONE,
    },
    _S.GONE: {
        Polled: _S.AVAILABLE,
    },
}
"""state → event type → next state. An event type missing from a state's row is illegal there."""


# ---------------------------------------------------------------------------------------------
# the session


def _check_optional_positive_int(
    inst: object, attribute: attrs.Attribute[int | None], value: object
) -> None:
    if value is not None:
        _check_positive_int(inst, attribute, value)  # type: ignore[arg-type]


def _check_count(_inst: object, attribute: attrs.Attribute[int], value: object) -> None:
    if type(value) is not int or not 0 <= value <= INT64_MAX:
        raise ValueError(f"{attribute.name} must be an integer >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class DeviceSession:
    """One device's standing in one job. Build with :meth:`new`, advance with :func:`step`.

    Attributes:
        device_id: the ``X-Flare-Device-ID``.
        platform: the platform last detected for the device (EDIP §2.5).
        state: see :class:`SessionState`.
        ticket: the ticket held (``SELECTED``/``TRAINING``), else ``None``.
        task_id: the open task (``TRAINING``), else ``None``.
        task_version: the model version delivered with the open task (``TRAINING``), else ``None``.
        assigned_at: when the current deadline started: the selection in ``SELECTED``, the
            delivery in ``TRAINING``; ``None`` otherwise.
        last_seen: ``now`` of the latest event the device itself caused (poll, delivery, report).
        last_ticket: the most recent ticket ever given (0: none). New tickets must exceed it.
        reports: how many reports closed a task of this session.
    """

    device_id: str = attrs.field(validator=_check_nonempty_str)
    platform: Platform = attrs.field(validator=v.instance_of(Platform))
    state: SessionState = attrs.field(default=SessionState.AVAILABLE)
    ticket: int | None = attrs.field(default=None, validator=_check_optional_positive_int)
    task_id: str | None = attrs.field(default=None, validator=v.optional(_check_nonempty_str))
    task_version: int | None = attrs.field(default=None, validator=_check_optional_positive_int)
    assigned_at: float | None = attrs.field(default=None, validator=v.optional(_check_now))
    last_seen: float = attrs.field(validator=_check_now)
    last_ticket: int = attrs.field(default=0, validator=_check_count)
    reports: int = attrs.field(default=0, validator=_check_count)

    def __attrs_post_init__(self) -> None:
        # Structural invariants, re-checked on every evolve(): a state and its fields agree.
        holds_ticket = self.state in (SessionState.SELECTED, SessionState.TRAINING)
        if holds_ticket != (self.ticket is not None):
            raise ValueError(f"state {self.state.name} and ticket={self.ticket} disagree")
        if holds_ticket != (self.assigned_at is not None):
            raise ValueError(f"state {self.state.name} and assigned_at disagree")
        training = self.state is SessionState.TRAINING
        if training != (self.task_id is not None) or training != (self.task_version is not None):
            raise ValueError(f"state {self.state.name} and task_id/task_version disagree")
        if self.ticket is not None and self.ticket > self.last_ticket:
            raise ValueError("ticket is newer than last_ticket")

    @classmethod
    def new(cls, device_id: str, platform: Platform, now: float) -> DeviceSession:
        """The session of a device that has just polled for the first time."""
        return cls(device_id=device_id, platform=platform, last_seen=now)

    @property
    def open_task(self) -> bool:
        """Whether a task was delivered and its report is still awaited."""
        return self.state is SessionState.TRAINING


def step(session: DeviceSession, event: SessionEvent) -> DeviceSession:
    """Apply ``event`` to ``session`` and return the new session.

    Raises:
        InvalidTransition: the event is not allowed in the session's state, or a guard failed
            (stale ticket, ticket or task id that does not match). ``session`` is unchanged.
    """
    state = session.state
    target = TRANSITIONS[state].get(type(event))
    if target is None:
        raise InvalidTransition(state=state, event_type=type(event))

    def refuse(message: str) -> InvalidTransition:
        return InvalidTransition(message, state=state, event_type=type(event))

    changes: dict[str, Any]
    match event:
        case Polled(now=now, platform=platform):
            changes = {"last_seen": now}
            if platform is not None:
                changes["platform"] = platform
        case Selected(ticket=ticket, now=now):
            if ticket <= session.last_ticket:
                raise refuse(
                    f"ticket {ticket} is not newer than the device's last ticket "
                    f"{session.last_ticket}"
                )
            changes = {"ticket": ticket, "last_ticket": ticket, "assigned_at": now}
        case TaskDelivered(ticket=ticket, task_id=task_id, model_version=version, now=now):
            if ticket != session.ticket:
                raise refuse(f"ticket {ticket} is not the device's ticket {session.ticket}")
            changes = {
                "task_id": task_id,
                "task_version": version,
                "assigned_at": now,
                "last_seen": now,
            }
        case Reported(task_id=task_id, now=now):
            if task_id != session.task_id:
                raise refuse(f"task {task_id!r} is not the device's open task {session.task_id!r}")
            changes = {**_CLEARED, "reports": session.reports + 1, "last_seen": now}
        case TicketExpired() | Released() | DeviceExpired():
            changes = dict(_CLEARED)
        case _:
            assert_never(event)
    return attrs.evolve(session, state=target, **changes)


_CLEARED: Final[Mapping[str, None]] = {
    "ticket": None,
    "task_id": None,
    "task_version": None,
    "assigned_at": None,
}


def expiry_event(
    session: DeviceSession,
    *,
    now: float,
    ticket_ttl: float,
    task_ttl: float,
    device_ttl: float,
) -> TicketExpired | DeviceExpired | None:
    """The expiry event due for ``session`` at ``now``, if any (EDIP §9.6, fixing R31).

    A ticket unused for ``ticket_ttl`` seconds (``SELECTED``, counted from the selection) or a
    task unreported for ``task_ttl`` (``TRAINING``, counted from the delivery) expires with
    :class:`TicketExpired`; an ``AVAILABLE`` device silent for ``device_ttl`` expires with
    :class:`DeviceExpired`. A device holding a ticket is judged by the ticket's deadline only
    (devices do not poll while they train), so a silent one first falls back to ``AVAILABLE`` and
    expires from there. Pass ``math.inf`` to disable a deadline. Pure: apply the result with
    :func:`step`.
    """
    match session.state:
        case SessionState.AVAILABLE:
            if now - session.last_seen >= device_ttl:
                return DeviceExpired(now=now)
        case SessionState.SELECTED | SessionState.TRAINING:
            ttl = task_ttl if session.state is SessionState.TRAINING else ticket_ttl
            assert session.assigned_at is not None  # guaranteed by DeviceSession's invariants
            if now - session.assigned_at >= ttl:
                return TicketExpired(now=now)
        case SessionState.GONE:
            pass
        case _:
            assert_never(session.state)
    return None
