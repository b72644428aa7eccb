"""The device session under random event sequences, against a shadow model.

Rules fire any event at any device, including ones that must be refused (stale or reused tickets,
deliveries for the wrong ticket, forged or late reports). Every refusal must be an
``InvalidTransition`` that leaves the session unchanged; every acceptance must follow
``TRANSITIONS``. Invariants: at most one open task per device, a ticket is never handed to the same
device twice, every accepted report closes exactly the task delivered before it, and ``reports``
counts exactly those.
"""

from __future__ import annotations

import pytest
from hypothesis import event as note_event
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

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
    SessionEvent,
    SessionState,
    TaskDelivered,
    TicketExpired,
)

DEVICE_NAMES = st.sampled_from(["a", "b", "c"])
TASK_IDS = st.sampled_from(["t1", "t2", "t3"])
PLATFORMS = st.none() | st.sampled_from(list(Platform))


class SessionMachine(RuleBasedStateMachine):
    devices = Bundle("devices")

    @initialize()
    def start(self) -> None:
        self.now = 0.0
        self.sessions: dict[str, DeviceSession] = {}
        self.tickets_given: dict[str, list[int]] = {}
        self.open_delivery: dict[str, str | None] = {}
        self.accepted_reports: dict[str, int] = {}

    def advance(self, dt: float) -> float:
        self.now += dt
        return self.now

    def apply(self, device: str, event: SessionEvent) -> bool:
        """Step one device; on refusal check nothing changed. Returns whether it was accepted."""
        before = self.sessions[device]
        refusal: InvalidTransition | None = None
        try:
            after = protocol.step(before, event)
        except InvalidTransition as exc:
            refusal = exc
        if refusal is not None:
            assert refusal.status_hint == 409
            assert refusal.state is before.state
            assert self.sessions[device] is before
            assert self.sessions[device] == before
            note_event(f"refused {type(event).__name__} in {before.state.name}")
            return False
        assert after.state is TRANSITIONS[before.state][type(event)]
        assert before.device_id == after.device_id
        self.sessions[device] = after
        note_event(f"accepted {type(event).__name__} in {before.state.name}")
        return True

    def pick(self, data: st.DataObject, device: str, state: SessionState) -> str:
        """Mostly a device in ``state`` (so long legal paths happen), sometimes ``device``."""
        ready = sorted(name for name, s in self.sessions.items() if s.state is state)
        if ready and data.draw(st.integers(0, 3), label="prefer") > 0:
            return data.draw(st.sampled_from(ready), label="device")
        return device

    # -- rules -----------------------------------------------------------------------------

    @rule(target=devices, name=DEVICE_NAMES, platform=st.sampled_from(list(Platform)))
    def first_poll(self, name: str, platform: Platform) -> str:
        if name not in self.sessions:
            self.sessions[name] = DeviceSession.new(name, platform, self.advance(0.1))
            self.tickets_given[name] = []
            self.open_delivery[name] = None
            self.accepted_reports[name] = 0
        return name

    @rule(device=devices, dt=st.floats(0, 10), platform=PLATFORMS)
    def poll(self, device: str, dt: float, platform: Platform | None) -> None:
        assert self.apply(device, Polled(now=self.advance(dt), platform=platform))

    @rule(data=st.data(), device=devices, ticket=st.integers(1, 12))
    def select(self, data: st.DataObject, device: str, ticket: int) -> None:
        device = self.pick(data, device, SessionState.AVAILABLE)
        held_before = list(self.tickets_given[device])
        if self.apply(device, Selected(ticket=ticket, now=self.advance(0.5))):
            assert ticket not in held_before, "a ticket was handed to the same device twice"
            self.tickets_given[device].append(ticket)

    @rule(
        data=st.data(),
        device=devices,
        right_ticket=st.booleans(),
        other=st.integers(1, 12),
        task=TASK_IDS,
    )
    def deliver(
        self, data: st.DataObject, device: str, right_ticket: bool, other: int, task: str
    ) -> None:
        device = self.pick(data, device, SessionState.SELECTED)
        held = self.sessions[device].ticket
        ticket = held if right_ticket and held is not None else other
        event = TaskDelivered(ticket=ticket, task_id=task, model_version=3, now=self.advance(0.5))
        if self.apply(device, event):
            assert ticket == held
            self.open_delivery[device] = task

    @rule(data=st.data(), device=devices, right_task=st.booleans(), other=TASK_IDS)
    def report(self, data: st.DataObject, device: str, right_task: bool, other: str) -> None:
        device = self.pick(data, device, SessionState.TRAINING)
        held = self.sessions[device].task_id
        task = held if right_task and held is not None else other
        if self.apply(device, Reported(task_id=task, now=self.advance(1.0))):
            assert self.open_delivery[device] == task, "a report closed a task never delivered"
            self.open_delivery[device] = None
            self.accepted_reports[device] += 1

    @rule(
        device=devices,
        kind=st.sampled_from([TicketExpired, Released, DeviceExpired, "clock"]),
        dt=st.floats(0, 200),
    )
    def withdraw(
        self, device: str, kind: type[TicketExpired | Released | DeviceExpired] | str, dt: float
    ) -> None:
        if isinstance(kind, str):
            self.expire_by_clock(device, dt)
        elif self.apply(device, kind(now=self.advance(2.0))):
            self.open_delivery[device] = None

    def expire_by_clock(self, device: str, dt: float) -> None:
        """Apply whatever :func:`protocol.expiry_event` says is due after ``dt`` seconds."""
        session = self.sessions[device]
        event = protocol.expiry_event(
            session, now=self.advance(dt), ticket_ttl=30.0, task_ttl=120.0, device_ttl=300.0
        )
        if event is not None:
            assert self.apply(device, event), "expiry_event proposed an illegal event"
            self.open_delivery[device] = None

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def at_most_one_open_task(self) -> None:
        for name, session in self.sessions.items():
            open_task = session.state is SessionState.TRAINING
            assert open_task == (session.task_id is not None)
            assert session.task_id == self.open_delivery[name]

    @invariant()
    def tickets_are_never_reused(self) -> None:
        for name, session in self.sessions.items():
            given = self.tickets_given[name]
            assert len(given) == len(set(given))
            assert given == sorted(given)
            assert session.last_ticket == (given[-1] if given else 0)
            if session.ticket is not None:
                assert session.ticket == given[-1]

    @invariant()
    def reports_count_accepted_reports(self) -> None:
        for name, session in self.sessions.items():
            assert session.reports == self.accepted_reports[name]

    @invariant()
    def clock_fields_stay_in_the_past(self) -> None:
        for session in self.sessions.values():
            assert session.last_seen <= self.now
            if session.assigned_at is not None:
                assert session.assigned_at <= self.now


TestSessionMachine = pytest.mark.slow(SessionMachine.TestCase)
TestSessionMachine.settings = settings(stateful_step_count=50)
