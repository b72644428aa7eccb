"""Errors, message validation, the device config helpers."""

from __future__ import annotations

import pickle
import types
from typing import Any

import attrs
import pytest

import protocol
from protocol import (
    ErrorBody,
    JobReply,
    JobRequest,
    Platform,
    RawResult,
    Status,
    TaskData,
)

# ---------------------------------------------------------------------------------------------
# errors


def test_protocol_error_is_abstract() -> None:
    with pytest.raises(TypeError, match="abstract"):
        protocol.ProtocolError("x")


@pytest.mark.parametrize(
    ("cls", "status_hint", "edip_status"),
    [
        (protocol.MalformedRequest, 400, "INVALID_REQUEST"),
        (protocol.MissingDeviceId, 400, "INVALID_REQUEST"),
        (protocol.DeviceIdMismatch, 400, "INVALID_REQUEST"),
        (protocol.Forbidden, 403, "INVALID_REQUEST"),
        (protocol.NotFound, 404, "INVALID_REQUEST"),
        (protocol.MethodNotAllowed, 405, "INVALID_REQUEST"),
        (protocol.PayloadTooLarge, 413, "INVALID_REQUEST"),
        (protocol.UnsupportedMediaType, 415, "INVALID_REQUEST"),
        (protocol.InvalidResult, 200, "ERROR"),
        (protocol.MalformedReply, 502, "ERROR"),
    ],
)
def test_error_table(cls: type[protocol.ProtocolError], status_hint: int, edip_status: str) -> None:
    error = cls("why")
    assert isinstance(error, protocol.ProtocolError)
    assert (error.status_hint, error.edip_status, error.message, str(error)) == (
        status_hint,
        edip_status,
        "why",
        "why",
    )
    assert error.to_body() == ErrorBody(status=Status(edip_status), message="why")
    assert cls().message  # every class has a default message


def test_header_errors_are_malformed_requests() -> None:
    assert issubclass(protocol.MissingDeviceId, protocol.MalformedRequest)
    assert issubclass(protocol.DeviceIdMismatch, protocol.MalformedRequest)
    assert protocol.MissingDeviceId().message == "Device ID missing"


def test_invalid_result_names_its_tensor() -> None:
    error = protocol.InvalidResult("bad", tensor="net.w")
    assert error.tensor == "net.w"
    assert protocol.InvalidResult("bad").tensor is None


def test_invalid_transition_carries_state_and_event() -> None:
    error = protocol.InvalidTransition(
        state=protocol.SessionState.GONE, event_type=protocol.Reported
    )
    assert error.status_hint == 409
    assert error.message == "Reported is not allowed in state GONE"


# ---------------------------------------------------------------------------------------------
# messages

loose: Any = protocol
"""``protocol`` without static types, for calls that are wrong on purpose."""


def test_messages_are_frozen_and_keyword_only() -> None:
    job = JobRequest(job_name="j")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        job.job_name = "k"  # type: ignore[misc]
    with pytest.raises(TypeError):
        loose.JobRequest("j")


def test_default_mappings_are_not_shared() -> None:
    assert JobRequest(job_name="a").capabilities is not JobRequest(job_name="b").capabilities


@pytest.mark.parametrize(
    ("build", "error", "words"),
    [
        (
            lambda: loose.Cookie(model_version=True, device_selection_id=1),
            TypeError,
            "model_version must be an integer",
        ),
        (
            lambda: loose.Cookie(model_version=1.0, device_selection_id=1),
            TypeError,
            "model_version must be an integer",
        ),
        (
            lambda: loose.Cookie(model_version=-1, device_selection_id=1),
            ValueError,
            "between 0 and",
        ),
        (
            lambda: loose.Cookie(model_version=2**63, device_selection_id=1),
            ValueError,
            "between 0 and",
        ),
        (
            lambda: loose.Cookie(
                model_version=1, device_selection_id=1, extra={"model_version": 2}
            ),
            ValueError,
            "use the field",
        ),
        (
            lambda: loose.Cookie(model_version=1, device_selection_id=1, extra={"x": None}),
            ValueError,
            "null is not allowed",
        ),
        (lambda: loose.JobRequest(job_name=None), TypeError, "job_name must be a string"),
        (
            lambda: loose.JobRequest(job_name="j", capabilities={"x": float("nan")}),
            ValueError,
            "not a finite number",
        ),
        (
            lambda: loose.JobRequest(job_name="j", capabilities={"x": b"b"}),
            TypeError,
            "bytes is not a JSON value",
        ),
        (
            lambda: loose.JobRequest(job_name="j", capabilities={1: "x"}),
            TypeError,
            "keys must be strings",
        ),
        (
            lambda: loose.JobRequest(job_name="j", capabilities={"x": 2**64}),
            ValueError,
            "64-bit range",
        ),
        (
            lambda: loose.JobRequest(job_name="j", capabilities=types.MappingProxyType({})),
            TypeError,
            "must be an object",
        ),
        (lambda: loose.TaskRequest(job_id=""), ValueError, "job_id must not be empty"),
        (lambda: loose.RawResult(data={1: {}}), TypeError, "keys must be strings"),
        (lambda: loose.RawResult(data=[]), TypeError, "data must be an object"),
        (
            lambda: loose.TaskData(kind="k", data="d", meta={"a": None}),
            ValueError,
            "meta.a: null is not allowed",
        ),
        (
            lambda: loose.TaskData(kind="k", data="d", meta={"a": [1, None]}),
            ValueError,
            "meta.a[1]: null",
        ),
        (lambda: loose.JobReply(status="OK"), TypeError, "Status"),
        (
            lambda: loose.JobReply(status=Status.OK, job_id="J"),
            ValueError,
            "needs job_id, job_name and job_data",
        ),
        (lambda: loose.JobReply(status=Status.NO_JOB, job_data={}), ValueError, "job_data.config"),
        (
            lambda: loose.JobReply(status=Status.NO_JOB, job_data={"config": {"components": {}}}),
            ValueError,
            "components must be an array",
        ),
        (
            lambda: loose.JobReply(status=Status.NO_JOB, retry_wait=1.5),
            TypeError,
            "retry_wait must be an integer",
        ),
        (
            lambda: loose.TaskReply(status=Status.OK, task_id="T", task_name="train"),
            ValueError,
            "needs task_id, task_name and task_data",
        ),
        (
            lambda: loose.TaskReply(status=Status.RETRY, retry_wait=-1),
            ValueError,
            "retry_wait must be between",
        ),
        (
            lambda: loose.SelectionReply(status=Status.OK, selection={"d": True}),
            ValueError,
            "selection['d']",
        ),
        (
            lambda: loose.ErrorBody(status=Status.ERROR, message="m", details={"k": 1}),
            TypeError,
            "details['k']",
        ),
    ],
)
def test_message_validation(build: Any, error: type[Exception], words: str) -> None:
    with pytest.raises(error) as info:
        build()
    assert words in str(info.value)


def test_cycles_are_refused_and_shared_values_are_fine() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="contains itself"):
        JobRequest(job_name="j", capabilities={"x": loop})
    shared = {"a": [1, 2]}
    job = JobRequest(job_name="j", capabilities={"x": shared, "y": shared, "z": (1, "t")})
    assert job.capabilities["x"] is job.capabilities["y"]


def test_deep_values_do_not_hit_the_recursion_limit() -> None:
    deep: object = 1
    for _ in range(5000):
        deep = [deep]
    assert JobRequest(job_name="j", capabilities={"d": deep}).job_name == "j"


def test_str_subclasses_are_json_strings() -> None:
    meta = {"platform": Platform.IOS, "status": Status.OK}
    assert TaskData(kind="k", data="d", meta=meta).meta == {"platform": "ios", "status": "OK"}


def test_requests_may_carry_null() -> None:
    assert JobRequest(job_name="j", capabilities={"x": None}).capabilities == {"x": None}
    assert RawResult(meta={"x": None}).meta == {"x": None}


# ---------------------------------------------------------------------------------------------
# device config


def test_job_config_structure() -> None:
    params = {"epoch": 3, "lr": 0.0001, "batch_size": 1}
    config = protocol.job_config(params)
    assert config == {
        "components": [{"type": "Trainer.DLTrainer", "name": "trainer", "args": params}],
        "executors": {"train": "@trainer"},
    }
    components = config["components"]
    assert isinstance(components, list)
    assert components[0]["args"] is not params  # a copy


def test_job_config_without_params_is_still_valid() -> None:
    config = protocol.job_config(None)
    assert config["components"] == [{"type": "Trainer.DLTrainer", "name": "trainer", "args": {}}]
    reply = JobReply(status=Status.OK, job_id="J", job_name="j", job_data={"config": config})
    assert reply.job_data is not None


@pytest.mark.parametrize("params", [{"lr": None}, {"lr": float("inf")}, {"x": object()}])
def test_job_config_refuses_what_devices_cannot_read(params: dict[str, Any]) -> None:
    with pytest.raises((TypeError, ValueError), match="device_training_params"):
        protocol.job_config(params)


def test_task_meta_per_platform() -> None:
    common = {
        "model_version": 2,
        "model_buffer_type": "executorch",
        "model_buffer_native_format": "binary",
        "model_buffer_encoding": "base64",
        "total_epochs": 3,
        "batch_size": 4,
    }
    kwargs: dict[str, Any] = {
        "model_version": 2,
        "total_epochs": 3,
        "batch_size": 4,
        "learning_rate": 0.01,
        "method": "cnn",
    }
    assert protocol.task_meta(Platform.ANDROID, **kwargs) == {
        **common,
        "learning_rate": 0.01,
        "method": "cnn",
    }
    assert protocol.task_meta(Platform.GENERIC, **kwargs) == {
        **common,
        "learning_rate": 0.01,
        "method": "cnn",
    }
    assert protocol.task_meta(Platform.IOS, **kwargs) == {**common, "method": "cnn"}


def test_task_meta_minimal_and_rounds() -> None:
    assert protocol.task_meta(Platform.IOS, model_version=1) == {
        "model_version": 1,
        "model_buffer_type": "executorch",
        "model_buffer_native_format": "binary",
        "model_buffer_encoding": "base64",
    }
    meta = protocol.task_meta(Platform.ANDROID, model_version=4, num_rounds=10, learning_rate=1)
    assert (meta["contribution_round"], meta["num_rounds"]) == (4, 10)
    assert type(meta["learning_rate"]) is float


@pytest.mark.parametrize(
    "kwargs",
    [
        {"model_version": 0},
        {"model_version": 1, "total_epochs": 0},
        {"model_version": 1, "batch_size": 2.0},
        {"model_version": 1, "learning_rate": float("nan")},
        {"model_version": 1, "learning_rate": True},
        {"model_version": 1, "method": ""},
        {"model_version": 1, "num_rounds": -1},
    ],
)
def test_task_meta_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(
        ValueError, match=next(iter(kwargs.keys() - {"model_version"}), "model_version")
    ):
        protocol.task_meta(Platform.ANDROID, **kwargs)


@pytest.mark.parametrize(
    "error",
    [
        protocol.MalformedRequest("m"),
        protocol.MissingDeviceId(),
        protocol.InvalidResult("bad", tensor="net.w"),
        protocol.InvalidTransition(state=protocol.SessionState.GONE, event_type=protocol.Reported),
        protocol.MalformedReply("r"),
    ],
)
def test_errors_survive_pickling(error: protocol.ProtocolError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert copy.message == error.message
    assert str(copy) == str(error)
    assert copy.__dict__ == error.__dict__
