"""JobCore: FedBuff model/device management driven through real plugins and a real SQLite store."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from edgefl._store import Store
from protocol import Cookie, Platform, SessionState, Status
from tests.helpers import CoreDriver

if TYPE_CHECKING:
    from pathlib import Path

P = {"p": (2,)}
W0 = {"p": [1.0, 2.0]}
ZERO = {"p": [0.0, 0.0]}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "state")
    yield s
    s.close()


def _advance(d: CoreDriver, devices: list[str]) -> None:
    """Each device trains on the current version and reports a zero delta."""
    for dev in devices:
        task = d.task(dev)
        assert d.report(dev, task.task_id, ZERO).status is Status.OK


# --------------------------------------------------------------------------------------------
# FEDBUFF.md §5, the worked example, fed through the core as device reports


@pytest.mark.parametrize(
    ("aggregator_args", "global_lr", "expected"),
    [
        ({"staleness": "nvflare"}, 1.0, [1.07475469, 2.10808802]),
        ({"staleness": "none"}, 1.0, [1.16666667, 2.23333333]),
        ({"staleness": "nvflare", "normalization": "per_version"}, 1.0, [1.17426407, 2.22426407]),
        ({"staleness": "polynomial", "normalization": "k"}, 1.0, [1.13737734, 2.20404401]),
        ({"staleness": "nvflare"}, 0.5, [1.03737734, 2.05404401]),
    ],
    ids=["main-staleness", "main-plain", "2.7.x", "paper", "main-lr0.5"],
)
def test_worked_example(
    store: Store, aggregator_args: dict[str, str], global_lr: float, expected: list[float]
) -> None:
    d = CoreDriver(
        store,
        schema=P,
        weights=W0,
        k=3,
        global_lr=global_lr,
        aggregator_args=aggregator_args,
        device_selection_size=16,
    )
    _advance(d, ["a", "b", "c"])  # zero deltas: version 2 keeps W = [1, 2]
    assert d.core.version == 2
    d.publish()
    old = d.task("old")  # trained from version 2, reports last
    assert old.cookie == Cookie(model_version=2, device_selection_id=old.cookie.device_selection_id)
    _advance(d, ["e", "f", "g"])
    assert d.core.version == 3
    np.testing.assert_allclose(d.core.weights["p"], [1.0, 2.0])
    d.publish()
    h, i = d.task("h"), d.task("i")
    assert h.cookie is not None
    assert h.cookie.model_version == 3
    d.report("h", h.task_id, {"p": [0.2, 0.0]})
    d.report("i", i.task_id, {"p": [0.0, 0.4]})
    assert d.core.version == 3
    assert d.report("old", old.task_id, {"p": [0.3, 0.3]}).status is Status.OK
    assert d.core.version == 4
    np.testing.assert_allclose(d.core.weights["p"], expected, rtol=0, atol=1e-6)
    assert d.core.weights["p"].dtype == np.float32
    # The version, its weights and the consumption of the buffer are durable together.
    assert store.count_pending(d.job_id) == 0
    np.testing.assert_allclose(store.read_version(d.job_id, 4)["p"], expected, atol=1e-6)
    assert d.core.statistics().updates_accepted == 9


# --------------------------------------------------------------------------------------------
# /task replies


def test_first_selection_waits_for_min_devices_then_hands_out_tasks(store: Store) -> None:
    d = CoreDriver(
        store,
        schema=P,
        weights=W0,
        device_selection_size=2,
        min_devices_to_start=2,
        total_epochs=3,
        batch_size=1,
        learning_rate=0.0001,
        method="xor",
    )
    first = d.poll("ios-1", platform="ios")
    assert first.status is Status.RETRY
    assert first.message == "Device not selected"
    assert first.retry_wait == 5  # seconds for iOS (EDIP §3.4)
    assert first.cookie is None  # it has none yet (EDIP §12 V2)
    second = d.poll("android-1")  # the second device completes the selection: task at once
    assert second.status is Status.OK
    assert second.retry_wait == 0
    assert second.task_name == "train"
    assert second.task_data is not None
    assert second.task_data.kind == "APP_DEFINED"
    assert second.task_data.meta == {  # EDIP §12 V3
        "model_version": 1,
        "model_buffer_type": "executorch",
        "model_buffer_native_format": "binary",
        "model_buffer_encoding": "base64",
        "total_epochs": 3,
        "batch_size": 1,
        "learning_rate": 0.0001,
        "method": "xor",
        "contribution_round": 1,
        "num_rounds": 10,
    }
    again = d.poll("ios-1", platform="ios")
    assert again.status is Status.OK
    assert again.task_data is not None
    # One base64 text for every platform; only the meta differs (no learning_rate for iOS).
    assert again.task_data.data is second.task_data.data
    assert "learning_rate" not in again.task_data.meta
    assert again.task_data.meta["model_version"] == 1
    tickets = {second.cookie.device_selection_id, again.cookie.device_selection_id}
    assert len(tickets) == 2


def test_android_retry_wait_is_milliseconds(store: Store) -> None:
    d = CoreDriver(store, schema=P, weights=W0, device_selection_size=2, min_devices_to_start=2)
    reply = d.poll("NVFlare_Android-0123456789abcdef")
    assert reply.status is Status.RETRY
    assert reply.retry_wait == 5000


def test_training_device_polling_again_keeps_its_task_and_gets_its_cookie(store: Store) -> None:
    d = CoreDriver(store, schema=P, weights=W0)
    task = d.task("a")
    again = d.poll("a", cookie=task.cookie)  # EDIP V3: RETRY, same cookie
    assert again.status is Status.RETRY
    assert again.message == "Device not selected"
    assert again.cookie == task.cookie
    assert d.core.session("a").task_id == task.task_id


def test_lost_task_reply_is_sent_again(store: Store) -> None:
    """The device polls with an older cookie (or none): it never saw its task. It gets the very
    same task again (task id, ticket, version), not a second one and not RETRY."""
    d = CoreDriver(store, schema=P, weights=W0, k=5)
    task = d.task("a")
    tasks_before = store.open_tasks(d.job_id)
    older = Cookie(model_version=1, device_selection_id=task.cookie.device_selection_id - 1)
    for cookie in (None, older):
        again = d.poll("a", cookie=cookie)
        assert again.status is Status.OK
        assert (again.task_id, again.cookie, again.task_data) == (
            task.task_id,
            task.cookie,
            task.task_data,
        )
    assert store.open_tasks(d.job_id) == tasks_before
    assert d.report("a", task.task_id, {"p": [0.5, 0.5]}).message is None
    assert d.core.statistics().updates_accepted == 1


def test_lost_task_reply_of_an_old_version_is_replaced(store: Store) -> None:
    """Once a newer version is published the unseen task is closed unreported (a late report of
    it is discarded as expired) and the device gets a fresh task of the published version."""
    d = CoreDriver(store, schema=P, weights=W0, k=1, device_selection_size=4)
    lost = d.task("a")
    _advance(d, ["b"])
    d.publish()
    assert d.core.version == d.core.published_version == 2
    fresh = d.poll("a", cookie=None)
    assert fresh.status is Status.OK
    assert fresh.task_id != lost.task_id
    assert fresh.cookie.model_version == 2
    assert fresh.cookie.device_selection_id > lost.cookie.device_selection_id
    assert d.store.task(d.job_id, lost.task_id).status == "expired"
    assert [t.task_id for t in store.open_tasks(d.job_id)].count(fresh.task_id) == 1
    assert lost.task_id not in {t.task_id for t in store.open_tasks(d.job_id)}
    assert d.report("a", lost.task_id, {"p": [9.0, 9.0]}).message == "expired report discarded"
    assert d.core.version == 2  # never aggregated
    assert d.report("a", fresh.task_id, ZERO).message is None
    assert d.core.version == 3
    assert d.core.statistics().updates_discarded["expired"] == 1


def test_reselected_device_gets_a_new_ticket_not_a_dead_slot(store: Store) -> None:
    d = CoreDriver(store, schema=P, weights=W0, device_selection_size=1, k=5)
    first = d.task("a")
    d.report("a", first.task_id, ZERO)
    assert d.core.version == 1  # no new version: same model version as before (R32's trap)
    second = d.poll("a", cookie=first.cookie)
    assert second.status is Status.OK
    assert second.cookie.device_selection_id > first.cookie.device_selection_id
    assert second.cookie.model_version == first.cookie.model_version == 1


def test_min_hole_to_fill_waits_for_enough_holes(store: Store) -> None:
    d = CoreDriver(
        store,
        schema=P,
        weights=W0,
        device_selection_size=2,
        min_hole_to_fill=2,
        min_devices_to_start=2,
        k=5,
    )
    assert d.poll("a").status is Status.RETRY  # one usable device: not enough to start
    b, a = d.task("b"), d.task("a")
    d.report("a", a.task_id, ZERO)
    assert d.poll("a").status is Status.RETRY  # one hole < min_hole_to_fill
    d.report("b", b.task_id, ZERO)
    assert d.poll("a").status is Status.OK


def test_device_reuse_false_selects_each_device_once(store: Store) -> None:
    d = CoreDriver(store, schema=P, weights=W0, device_selection_size=1, device_reuse=False, k=5)
    a = d.task("a")
    d.report("a", a.task_id, ZERO)
    assert d.poll("a").status is Status.RETRY
    assert d.poll("b").status is Status.OK


# --------------------------------------------------------------------------------------------
# /result: accepted once, discarded for a reason, or refused


def test_duplicate_report_is_ok_and_counted_once(store: Store) -> None:
    d = CoreDriver(store, schema=P, weights=W0, k=5)
    task = d.task("a")
    first = d.report("a", task.task_id, {"p": [0.5, 0.5]})
    second = d.report("a", task.task_id, {"p": [0.5, 0.5]})
    assert first.status is second.status is Status.OK
    assert first.message is None
    assert second.message == "duplicate report discarded"
    stats = d.core.statistics()
    assert stats.updates_accepted == 1
    assert stats.updates_pending == 1
    assert stats.updates_discarded["duplicate"] == 1
    assert store.count_pending(d.job_id) == 1


def test_foreign_task_is_discarded_and_the_owner_can_still_report(store: Store) -> None:
    d = CoreDriver(store, schema=P, weights=W0, k=5)
    a, b = d.task("a"), d.task("b")
    stolen = d.report("b", a.task_id, {"p": [9.0, 9.0]})
    assert stolen.status is Status.OK
    assert stolen.message == "foreign report discarded"
    unknown = d.report("b", "no-such-task", {"p": [9.0, 9.0]})
    assert unknown.message == "foreign report discarded"
    assert d.core.statistics().updates_pending == 0
    assert d.report("a", a.task_id, ZERO).message is None
    assert d.report("b", b.task_id, ZERO).message is None
    stats = d.core.statistics()
    assert (stats.updates_accepted, stats.updates_discarded["foreign"]) == (2, 2)


def test_stale_report_outside_max_model_history_is_discarded(store: Store) -> None:
    d = CoreDriver(store, schema=P, weights=W0, k=1, max_model_history=1, device_selection_size=4)
    slow = d.task("slow")  # version 1
    fast = d.task("fast")
    d.report("fast", fast.task_id, {"p": [1.0, 1.0]})
    assert d.core.version == 2
    reply = d.report("slow", slow.task_id, {"p": [5.0, 5.0]})
    assert reply.status is Status.OK
    assert reply.message == "stale report discarded"
    assert d.core.version == 2
    np.testing.assert_allclose(d.core.weights["p"], [2.0, 3.0])
    assert d.core.statistics().updates_discarded["stale"] == 1
    # Its task is closed; the free slot went straight back to it with a new ticket.
    session = d.core.session("slow")
    assert session.task_id is None
    assert session.ticket is not None
    assert session.ticket > slow.cookie.device_selection_id


def test_version_comes_from_the_server_record_not_the_cookie(store: Store) -> None:
    """A device cannot dodge staleness by claiming a newer version (R27)."""
    d = CoreDriver(store, schema=P, weights=W0, k=1, max_model_history=1, device_selection_size=4)
    slow = d.task("slow")
    fast = d.task("fast")
    d.report("fast", fast.task_id, ZERO)
    d.publish()
    forged = Cookie(model_version=2, device_selection_id=slow.cookie.device_selection_id)
    assert forged != slow.cookie
    reply = d.report("slow", slow.task_id, {"p": [5.0, 5.0]})  # the cookie is never consulted
    assert reply.message == "stale report discarded"


def test_report_after_ticket_expiry_is_discarded_and_the_slot_reused(store: Store) -> None:
    d = CoreDriver(store, schema=P, weights=W0, device_selection_size=1, task_timeout=10.0, k=5)
    task = d.task("a")
    assert d.poll("b").status is Status.RETRY  # the only slot is a's
    d.tick(5.0)
    assert d.core.selection() == {"a": task.cookie.device_selection_id}
    d.tick(6.0)  # 11 s after delivery: a's slot goes to b, which had polled
    assert list(d.core.selection()) == ["b"]
    reply = d.report("a", task.task_id, {"p": [1.0, 1.0]})
    assert reply.status is Status.OK
    assert reply.message == "expired report discarded"
    assert d.core.statistics().updates_pending == 0
    assert d.core.statistics().updates_discarded["expired"] == 1
    assert store.task(d.job_id, task.task_id).status == "expired"
    assert d.poll("b").status is Status.OK


def test_unused_ticket_expires_too(store: Store) -> None:
    d = CoreDriver(
        store,
        schema=P,
        weights=W0,
        device_selection_size=2,
        min_devices_to_start=2,
        task_timeout=10.0,
    )
    assert d.poll("a").status is Status.RETRY
    assert d.poll("b").status is Status.OK  # the fill selected a and b; a never comes back
    first_ticket = d.core.session("a").ticket
    assert d.core.session("a").state is SessionState.SELECTED
    assert d.poll("c").status is Status.RETRY
    d.tick(11.0)  # a's unused ticket and b's unreported task both expire
    assert d.core.session("a").state is SessionState.AVAILABLE
    assert d.core.selection() == {"c": d.core.session("c").ticket}
    assert d.poll("c").status is Status.OK
    back = d.poll("a")  # a polls again: it rejoins and takes the other slot, with a new ticket
    assert back.status is Status.OK
    assert back.cookie is not None
    assert back.cookie.device_selection_id > first_ticket


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"net.p": {"sizes": [3], "data": [0.0, 0.0, 0.0]}}, "p"),
        ({"net.q": {"sizes": [2], "data": [0.0, 0.0]}}, "q"),
        ({"net.p": {"sizes": [2], "data": [0.0, float("nan")]}}, "p"),
        ({}, ""),
    ],
    ids=["shape", "name", "nan", "empty"],
)
def test_unusable_tensors_get_error_and_change_nothing(
    store: Store, data: dict[str, object], needle: str
) -> None:
    d = CoreDriver(store, schema=P, weights=W0, k=5)
    task = d.task("a")
    reply = d.report("a", task.task_id, ZERO, data=data)
    assert reply.status is Status.ERROR
    assert reply.task_id == task.task_id
    assert reply.task_name == "train"
    assert reply.message
    assert needle in reply.message
    stats = d.core.statistics()
    assert (stats.updates_accepted, stats.updates_pending) == (0, 0)
    assert stats.updates_discarded["invalid"] == 1
    assert store.count_pending(d.job_id) == 0


def test_device_failure_status_gets_error(store: Store) -> None:
    d = CoreDriver(store, schema=P, weights=W0, k=5)
    task = d.task("a")
    reply = d.report("a", task.task_id, ZERO, status="ERROR")
    assert reply.status is Status.ERROR
    assert reply.message == "missing result or bad status"
    assert d.core.statistics().updates_discarded["failed"] == 1


@pytest.mark.parametrize(
    "data",
    [None, {"error": "cannot load the model"}],
    ids=["usable-tensors", "ios-error-payload"],
)
def test_result_kind_error_gets_error_and_is_never_aggregated(
    store: Store, data: dict[str, object] | None
) -> None:
    # EDIP 6.4: a result of kind "error" is a device-reported failure, even when its data would
    # decode as tensors; iOS sends {"kind": "error", "data": {"error": ...}}.
    d = CoreDriver(store, schema=P, weights=W0, k=1)
    task = d.task("a")
    reply = d.report("a", task.task_id, {"p": [1.0, 1.0]}, kind="error", data=data)
    assert reply.status is Status.ERROR
    assert reply.message == "device reported an error (result kind 'error')"
    stats = d.core.statistics()
    assert (stats.updates_accepted, stats.updates_pending, stats.version) == (0, 0, 1)
    assert stats.updates_discarded["failed"] == 1
    assert store.count_pending(d.job_id) == 0


@pytest.mark.parametrize("form", ["android", "ios", "python", "cbor"])
def test_every_device_form_is_accepted(store: Store, form: str) -> None:
    d = CoreDriver(
        store, schema={"w": (2, 2), "b": (2,)}, weights={"w": np.eye(2), "b": [0, 0]}, k=1
    )
    task = d.task("a")
    delta = {"w": [[0.5, -1.0], [1e-4, 0.0]], "b": [-0.0035, 0.0035]}
    assert d.report("a", task.task_id, delta, form=form).status is Status.OK  # type: ignore[arg-type]
    np.testing.assert_allclose(d.core.weights["w"], np.eye(2) + np.array(delta["w"]), atol=1e-7)


# --------------------------------------------------------------------------------------------
# the end of a job, devices going idle


def test_reaching_max_model_version_finishes_the_job(store: Store) -> None:
    d = CoreDriver(store, schema=P, weights=W0, k=1, max_model_version=2, device_selection_size=2)
    a, _b = d.task("a"), d.task("b")
    d.report("a", a.task_id, {"p": [1.0, 1.0]})
    assert d.core.finished
    assert d.core.statistics().devices_selected == 0
    assert d.poll("b").status is Status.DONE
    assert store.job_row(d.job_id).finished
    assert d.core.session("b").state is SessionState.AVAILABLE  # its ticket was released


def test_idle_devices_leave_the_pool_and_come_back(store: Store) -> None:
    d = CoreDriver(store, schema=P, weights=W0, device_selection_size=1, device_ttl=60.0)
    d.task("a")
    assert d.poll("b").status is Status.RETRY  # registered, waiting for a slot
    d.tick(61.0, sweep=True)
    assert d.core.session("b").state is SessionState.GONE
    assert d.core.session("a").state is SessionState.TRAINING  # holds a ticket: not swept
    assert store.devices(d.job_id) is not None
    assert {row["device_id"]: row["state"] for row in store.devices(d.job_id)}["b"] == "gone"
    d.poll("b")
    assert d.core.session("b").state is SessionState.AVAILABLE


def test_selection_lists_ticket_holders(store: Store) -> None:
    d = CoreDriver(store, schema=P, weights=W0, device_selection_size=2)
    a = d.task("a")
    d.core.register([], d.now)
    assert d.core.selection() == {"a": a.cookie.device_selection_id}
    assert d.core.platform_of("a") is Platform.ANDROID


# --------------------------------------------------------------------------------------------
# restart: the same state dir resumes exactly where the job stood


def test_restart_resumes_versions_buffers_and_task_ids(tmp_path: Path) -> None:
    root = tmp_path / "state"
    store = Store(root)
    d = CoreDriver(store, schema=P, weights=W0, k=3, device_selection_size=8)
    _advance(d, ["a", "b", "c"])
    d.publish()
    x, y, z = d.task("x"), d.task("y"), d.task("z")
    d.report("x", x.task_id, {"p": [0.3, 0.0]})
    d.report("y", y.task_id, {"p": [0.0, 0.6]})
    before = d.core.statistics()
    store.close()

    store = Store(root)
    r = CoreDriver(store, schema=P, weights=W0, k=3, device_selection_size=8)
    assert r.resumed
    assert r.job_id == d.job_id
    stats = r.core.statistics()
    assert (stats.version, stats.updates_accepted, stats.updates_pending) == (2, 5, 2)
    assert stats.devices_selected == before.devices_selected
    # A report sent again after the restart is still a duplicate.
    assert r.report("x", x.task_id, {"p": [0.3, 0.0]}).message == "duplicate report discarded"
    # A task handed out before the restart can still be reported, and completes the buffer:
    # the running sums were rebuilt from the stored updates.
    assert r.report("z", z.task_id, {"p": [0.3, 0.3]}).message is None
    assert r.core.version == 3
    np.testing.assert_allclose(r.core.weights["p"], [1.2, 2.3], atol=1e-6)
    # New tickets continue the counter: never one a device already had.
    r.publish()
    t = r.task("fresh")
    assert t.cookie.device_selection_id > max(c.cookie.device_selection_id for c in (x, y, z))
    store.close()


def test_events_are_logged_as_one_key_value_line(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="edgefl")
    d = CoreDriver(store, schema=P, weights=W0, k=5)
    task = d.task("dev 1")  # a space: the value gets quoted
    d.report("dev 1", task.task_id, ZERO)
    d.report("dev 1", task.task_id, ZERO)
    lines = [r.getMessage() for r in caplog.records]
    delivered = next(line for line in lines if line.startswith("event=task_delivered "))
    assert f'device="dev 1" task={task.task_id} version=1' in delivered
    assert f"job={d.job_id}" in delivered
    accepted = next(line for line in lines if line.startswith("event=report_accepted "))
    assert f'job={d.job_id} device="dev 1" task={task.task_id} version=1' in accepted
    discarded = next(line for line in lines if line.startswith("event=report_discarded "))
    assert discarded.endswith("reason=duplicate")
    assert all("\n" not in line for line in lines)


def test_key_value_formatter() -> None:
    import logging

    from edgefl._log import KeyValueFormatter, format_fields

    assert format_fields("x", {"a": 1, "b": None, "c": "two words", "d": 0.5}) == (
        'event=x a=1 c="two words" d=0.5'
    )
    record = logging.LogRecord("edgefl", logging.WARNING, __file__, 1, "plain %s", ("text",), None)
    line = KeyValueFormatter().format(record)
    assert line.endswith('level=warning event=message text="plain text" logger=edgefl')
