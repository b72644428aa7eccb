"""The device session: one test per table cell (state x event), one per guard, expiry."""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest

import protocol
from protocol import (
    TRANSITIONS,
    DeviceExpired,
    DeviceSession,
    InvalidTransition,
    Platform,
    Polled,
    Released,
    Reported,
    Selected,
    SessionState,
    TaskDelivered,
    TicketExpired,
    step,
)

S = SessionState
loose: Any = protocol
"""``protocol`` without static types, for calls that are wrong on purpose."""


def available() -> DeviceSession:
    return DeviceSession.new("dev", Platform.IOS, 0.0)


def selected() -> DeviceSession:
    return step(available(), Selected(ticket=5, now=1.0))


def training() -> DeviceSession:
    return step(selected(), TaskDelivered(ticket=5, task_id="t1", model_version=3, now=2.0))


def gone() -> DeviceSession:
    return step(available(), DeviceExpired(now=9.0))


SESSIONS = {S.AVAILABLE: available, S.SELECTED: selected, S.TRAINING: training, S.GONE: gone}


def event_for(event_type: type[Any], session: DeviceSession) -> protocol.SessionEvent:
    """An event of ``event_type`` that passes the guards for ``session`` where that is possible."""
    now = 10.0
    if event_type is Polled:
        return Polled(now=now)
    if event_type is Selected:
        return Selected(ticket=session.last_ticket + 1, now=now)
    if event_type is TaskDelivered:
        return TaskDelivered(ticket=session.ticket or 1, task_id="t1", model_version=3, now=now)
    if event_type is Reported:
        return Reported(task_id=session.task_id or "t1", now=now)
    event: protocol.SessionEvent = event_type(now=now)
    return event


EVENT_TYPES = (Polled, Selected, TaskDelivered, Reported, TicketExpired, Released, DeviceExpired)


def test_sessions_are_built_in_the_state_they_are_named_for() -> None:
    for state, build in SESSIONS.items():
        assert build().state is state


def test_the_table_covers_every_state_and_event() -> None:
    assert set(TRANSITIONS) == set(SessionState)
    used = {event for row in TRANSITIONS.values() for event in row}
    assert used == set(EVENT_TYPES)


@pytest.mark.parametrize("state", list(SessionState))
@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_each_table_cell(state: SessionState, event_type: type[Any]) -> None:
    session = SESSIONS[state]()
    event = event_for(event_type, session)
    target = TRANSITIONS[state].get(event_type)
    if target is None:
        with pytest.raises(InvalidTransition) as info:
            step(session, event)
        assert info.value.status_hint == 409
        assert info.value.state is state
        assert info.value.event_type is event_type
        assert info.value.message == f"{event_type.__name__} is not allowed in state {state.name}"
        assert session == SESSIONS[state]()  # untouched
    else:
        assert step(session, event).state is target


def test_selected_records_the_ticket() -> None:
    session = selected()
    assert (session.ticket, session.last_ticket, session.assigned_at) == (5, 5, 1.0)
    assert session.task_id is None


def test_tickets_must_increase() -> None:
    session = step(selected(), TicketExpired(now=3.0))
    assert (session.state, session.ticket, session.last_ticket) == (S.AVAILABLE, None, 5)
    for ticket in (5, 4, 1):
        with pytest.raises(
            InvalidTransition, match=f"ticket {ticket} is not newer than the device's last ticket 5"
        ):
            step(session, Selected(ticket=ticket, now=4.0))
    assert step(session, Selected(ticket=6, now=4.0)).ticket == 6


def test_delivery_must_name_the_held_ticket() -> None:
    with pytest.raises(InvalidTransition, match="ticket 4 is not the device's ticket 5"):
        step(selected(), TaskDelivered(ticket=4, task_id="t", model_version=1, now=2.0))


def test_delivery_records_the_task() -> None:
    session = training()
    assert (session.task_id, session.task_version, session.assigned_at, session.last_seen) == (
        "t1",
        3,
        2.0,
        2.0,
    )
    assert session.open_task


def test_report_must_name_the_open_task() -> None:
    with pytest.raises(InvalidTransition, match="task 'other' is not the device's open task 't1'"):
        step(training(), Reported(task_id="other", now=3.0))


def test_report_closes_the_task_and_counts() -> None:
    session = step(training(), Reported(task_id="t1", now=4.0))
    assert session.state is S.AVAILABLE
    assert (session.ticket, session.task_id, session.task_version, session.assigned_at) == (
        None,
    ) * 4
    assert (session.reports, session.last_seen, session.last_ticket) == (1, 4.0, 5)
    assert not session.open_task


@pytest.mark.parametrize(
    "event", [TicketExpired(now=7.0), Released(now=7.0), DeviceExpired(now=7.0)]
)
def test_expiry_and_release_clear_the_task(event: protocol.SessionEvent) -> None:
    before = training()
    after = step(before, event)
    assert (after.ticket, after.task_id, after.task_version, after.assigned_at) == (None,) * 4
    assert after.last_seen == before.last_seen  # the device did nothing
    assert after.reports == 0


def test_a_late_report_after_expiry_is_refused() -> None:
    session = step(training(), TicketExpired(now=7.0))
    with pytest.raises(InvalidTransition):
        step(session, Reported(task_id="t1", now=8.0))


def test_poll_refreshes_and_may_update_the_platform() -> None:
    session = step(training(), Polled(now=5.0))
    assert (session.state, session.last_seen, session.platform, session.task_id) == (
        S.TRAINING,
        5.0,
        Platform.IOS,
        "t1",
    )
    assert step(session, Polled(now=6.0, platform=Platform.ANDROID)).platform is Platform.ANDROID


def test_a_poll_revives_a_gone_device() -> None:
    session = step(gone(), Polled(now=20.0))
    assert (session.state, session.last_seen) == (S.AVAILABLE, 20.0)


def test_sessions_are_immutable() -> None:
    session = available()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        session.state = S.GONE  # type: ignore[misc]


@pytest.mark.parametrize(
    "changes",
    [
        {"state": S.TRAINING},
        {"state": S.SELECTED},
        {"ticket": 1, "last_ticket": 1},
        {"state": S.SELECTED, "ticket": 2, "assigned_at": 0.0, "last_ticket": 1},
        {"task_id": "t"},
        {"last_seen": math.nan},
        {"device_id": ""},
        {"reports": -1},
    ],
)
def test_inconsistent_sessions_cannot_be_built(changes: dict[str, Any]) -> None:
    with pytest.raises((ValueError, TypeError)):
        attrs.evolve(available(), **changes)


@pytest.mark.parametrize(
    "build",
    [
        lambda: Selected(ticket=0, now=1.0),
        lambda: Selected(ticket=True, now=1.0),
        lambda: Polled(now=math.inf),
        lambda: loose.Polled(now="1"),
        lambda: TaskDelivered(ticket=1, task_id="", model_version=1, now=1.0),
        lambda: TaskDelivered(ticket=1, task_id="t", model_version=0, now=1.0),
        lambda: loose.Reported(task_id=None, now=1.0),
    ],
)
def test_events_validate_themselves(build: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        build()


# ---------------------------------------------------------------------------------------------
# expiry


def expiry(session: DeviceSession, now: float, **ttls: float) -> object:
    values = {"ticket_ttl": 10.0, "task_ttl": 100.0, "device_ttl": 1000.0, **ttls}
    return protocol.expiry_event(session, now=now, **values)


def test_fresh_sessions_have_nothing_due() -> None:
    assert expiry(available(), 5.0) is None
    assert expiry(selected(), 10.9) is None
    assert expiry(training(), 101.9) is None
    assert expiry(gone(), 1e9) is None


def test_unused_ticket_expires() -> None:
    assert expiry(selected(), 11.0) == TicketExpired(now=11.0)


def test_unreported_task_expires_from_delivery() -> None:
    assert expiry(training(), 102.0) == TicketExpired(now=102.0)


def test_silent_available_device_expires() -> None:
    assert expiry(available(), 999.9) is None
    assert expiry(available(), 1000.0) == DeviceExpired(now=1000.0)


def test_a_ticket_holder_is_judged_by_its_deadline_only() -> None:
    # Devices do not poll while they train: a long silence in TRAINING is the task's deadline.
    assert expiry(training(), 5000.0) == TicketExpired(now=5000.0)
    assert expiry(training(), 5000.0, task_ttl=math.inf) is None
    assert expiry(selected(), 5000.0, ticket_ttl=math.inf) is None


def test_infinite_ttls_disable_expiry() -> None:
    inf = math.inf
    assert expiry(training(), 1e12, ticket_ttl=inf, task_ttl=inf, device_ttl=inf) is None


def test_expiry_events_apply() -> None:
    session = selected()
    event = expiry(session, 11.0)
    assert isinstance(event, TicketExpired)
    assert step(session, event).state is S.AVAILABLE
