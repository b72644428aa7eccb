"""EDIP §12 golden vectors, each variant its own test, at the protocol level.

Requests are the exact HTTP text of the spec, parsed into (method, path, query, headers, body) and
fed to the decoders; replies are built with the message classes and must encode to exactly the
spec's JSON (compared as bytes after compacting the spec text, so key order counts too). What only
the server can decide (buffering, duplicates, version windows) is the server's tests; here we test
what the protocol layer decides.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import orjson
import pytest

import protocol
from protocol import (
    Cookie,
    DeviceSession,
    InvalidResult,
    InvalidTransition,
    JobReply,
    Platform,
    Reported,
    ResultReply,
    SelectionReply,
    Status,
    TaskData,
    TaskDelivered,
    TaskReply,
)

JOB = "3b8d6f2a-9c41-4e7b-a5d2-0f6e1c9b7a35"
TASK = "c0a8e1f4-2b7d-4c6e-9f13-5d2a8b4e6c71"
ANDROID_ID = "NVFlare_Android-8f14e45fceea167a"
IOS_ID = "E621E1F8-C36C-495A-93FC-0C247A3E6E5F"
TRAINING_PARAMS = {"epoch": 3, "lr": 0.0001, "batch_size": 1}
XOR_SCHEMA = {
    "linear1.weight": (4, 2),
    "linear1.bias": (4,),
    "linear2.weight": (2, 4),
    "linear2.bias": (2,),
}
# Stands in for <PTE_B64>: opaque, only checked to be a non-empty base64 string.
PTE_B64 = base64.b64encode(b"\x00\x01fake pte bytes\xff").decode()


class HttpRequest:
    """The parts of a spec request that the decoders see."""

    def __init__(self, text: str) -> None:
        head, _, body = text.partition("\n\n")
        request_line, *header_lines = head.strip("\n").split("\n")
        self.method, target, _ = request_line.split(" ")
        url = urlsplit(target)
        self.path = url.path
        self.query = dict(parse_qsl(url.query, keep_blank_values=True))
        self.headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip()] = value.strip()
        self.body = body.strip().encode()
        self.content_type = self.headers.get("Content-Type")


def spec_json(text: str) -> bytes:
    """A JSON text from the spec, compacted (key order kept)."""
    return orjson.dumps(orjson.loads(text))


def assert_no_null(body: bytes) -> None:
    def walk(value: Any) -> None:
        assert value is not None
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(orjson.loads(body))


ANDROID_INFO = f"device_id={ANDROID_ID}&app_name=ExecuTorch Demo&app_version=1.0&platform=android"
ANDROID_HEADERS = f"""X-Flare-Device-ID: {ANDROID_ID}
X-Flare-Device-Info: {ANDROID_INFO}
X-Flare-User-Info: user_id=8f14e45fceea167a"""

IOS_HEADERS = f"""X-Flare-Device-ID: {IOS_ID}
X-Flare-Device-Info: {{"app_version":"1.0","device_id":"{IOS_ID}","platform":"ios"}}
X-Flare-User-Info: {{}}"""

# ---------------------------------------------------------------------------------------------
# V1: Android joins a job

V1_REQUEST = f"""POST /job HTTP/1.1
Content-Type: application/json; charset=utf-8
{ANDROID_HEADERS}

{{"job_name":"xor_et","capabilities":{{"supported_jobs":["CIFAR10","XOR"],"methods":["cnn","xor"]}}}}
"""

V1_RESPONSE = """{"status":"OK","job_id":"3b8d6f2a-9c41-4e7b-a5d2-0f6e1c9b7a35","job_name":"xor_et",
 "job_data":{"config":{"components":[{"type":"Trainer.DLTrainer","name":"trainer",
   "args":{"epoch":3,"lr":0.0001,"batch_size":1}}],"executors":{"train":"@trainer"}}}}"""


def _v1_reply() -> bytes:
    reply = JobReply(
        status=Status.OK,
        job_id=JOB,
        job_name="xor_et",
        job_data={"config": protocol.job_config(TRAINING_PARAMS)},
    )
    return protocol.encode_reply(reply)


def test_v1_android_joins_a_job() -> None:
    request = HttpRequest(V1_REQUEST)
    identity = protocol.parse_identity(request.headers)
    assert identity.device_id == ANDROID_ID
    assert identity.device_info["app_name"] == "ExecuTorch Demo"  # the raw space survives
    assert identity.user_info == {"user_id": "8f14e45fceea167a"}
    assert protocol.resolve_platform(identity, None) is Platform.ANDROID

    job = protocol.decode_job_request(request.body, request.content_type)
    assert job.job_name == "xor_et"
    assert job.capabilities == {"supported_jobs": ["CIFAR10", "XOR"], "methods": ["cnn", "xor"]}

    body = _v1_reply()
    assert body == spec_json(V1_RESPONSE)
    assert_no_null(body)


def test_v1b_empty_methods_are_accepted() -> None:
    request = HttpRequest(
        V1_REQUEST.replace(
            '"capabilities":{"supported_jobs":["CIFAR10","XOR"],"methods":["cnn","xor"]}',
            '"capabilities":{"methods":[]}',
        )
    )
    job = protocol.decode_job_request(request.body, request.content_type)
    assert job.job_name == "xor_et"
    assert job.capabilities == {"methods": []}
    assert _v1_reply() == spec_json(V1_RESPONSE)


def test_v1c_unknown_job_name() -> None:
    request = HttpRequest(V1_REQUEST.replace('"job_name":"xor_et"', '"job_name":"nope"'))
    job = protocol.decode_job_request(request.body, request.content_type)
    assert job.job_name == "nope"
    assert protocol.encode_reply(JobReply(status=Status.NO_JOB)) == b'{"status":"NO_JOB"}'


# ---------------------------------------------------------------------------------------------
# V2: iOS polls before it is selected

V2_REQUEST = f"""POST /task?job_id={JOB} HTTP/1.1
Content-Type: application/json
{IOS_HEADERS}

{{}}
"""
V2_RESPONSE = (
    '{"status":"RETRY","job_id":"3b8d6f2a-9c41-4e7b-a5d2-0f6e1c9b7a35","retry_wait":5,'
    '"message":"Device not selected"}'
)


def _not_selected(platform: Platform) -> bytes:
    reply = TaskReply(
        status=Status.RETRY,
        job_id=JOB,
        retry_wait=protocol.retry_wait(platform, 5),
        message="Device not selected",
    )
    return protocol.encode_reply(reply)


def test_v2_ios_polls_before_selection() -> None:
    request = HttpRequest(V2_REQUEST)
    identity = protocol.parse_identity(request.headers)
    assert identity.device_info == {"app_version": "1.0", "device_id": IOS_ID, "platform": "ios"}
    assert identity.user_info == {}
    platform = protocol.resolve_platform(identity, None)
    assert platform is Platform.IOS

    task = protocol.decode_task_request(request.query, request.body, request.content_type)
    assert task == protocol.TaskRequest(job_id=JOB, cookie=None)
    assert _not_selected(platform) == spec_json(V2_RESPONSE)


def test_v2_android_gets_milliseconds() -> None:
    request = HttpRequest(V2_REQUEST.replace(IOS_HEADERS, ANDROID_HEADERS))
    platform = protocol.resolve_platform(protocol.parse_identity(request.headers), None)
    assert platform is Platform.ANDROID
    assert _not_selected(platform) == spec_json(
        V2_RESPONSE.replace('"retry_wait":5', '"retry_wait":5000')
    )


# ---------------------------------------------------------------------------------------------
# V3: Android receives a task

V3_RESPONSE = """{"status":"OK","job_id":"3b8d6f2a-9c41-4e7b-a5d2-0f6e1c9b7a35","retry_wait":0,
 "task_id":"c0a8e1f4-2b7d-4c6e-9f13-5d2a8b4e6c71","task_name":"train",
 "task_data":{"kind":"APP_DEFINED","data":"<PTE_B64>",
   "meta":{"model_version":2,"model_buffer_type":"executorch","model_buffer_native_format":"binary",
           "model_buffer_encoding":"base64","total_epochs":3,"batch_size":1,"learning_rate":0.0001,
           "method":"xor","contribution_round":2,"num_rounds":10}},
 "cookie":{"model_version":2,"device_selection_id":2}}"""


def _task_reply(platform: Platform) -> TaskReply:
    meta = protocol.task_meta(
        platform,
        model_version=2,
        total_epochs=3,
        batch_size=1,
        learning_rate=0.0001,
        method="xor",
        num_rounds=10,
    )
    return TaskReply(
        status=Status.OK,
        job_id=JOB,
        retry_wait=0,
        task_id=TASK,
        task_name=protocol.TASK_NAME,
        task_data=TaskData(kind=protocol.TASK_KIND, data=PTE_B64, meta=meta),
        cookie=Cookie(model_version=2, device_selection_id=2),
    )


def _check_pte(body: bytes) -> dict[str, Any]:
    """The spec's <PTE_B64> is opaque: check it is a non-empty base64 string, then mask it."""
    obj: dict[str, Any] = orjson.loads(body)
    data = obj["task_data"]["data"]
    assert isinstance(data, str)
    assert base64.b64decode(data, validate=True)
    obj["task_data"]["data"] = "<PTE_B64>"
    return obj


def test_v3_android_receives_a_task() -> None:
    request = HttpRequest(V2_REQUEST.replace(IOS_HEADERS, ANDROID_HEADERS))
    task = protocol.decode_task_request(request.query, request.body, request.content_type)
    assert task.job_id == JOB
    assert task.cookie is None

    body = protocol.encode_reply(_task_reply(Platform.ANDROID))
    assert orjson.dumps(_check_pte(body)) == spec_json(V3_RESPONSE)
    assert_no_null(body)


def test_v3_ios_meta_has_no_learning_rate() -> None:
    body = protocol.encode_reply(_task_reply(Platform.IOS))
    expected = orjson.loads(V3_RESPONSE)
    del expected["task_data"]["meta"]["learning_rate"]
    assert _check_pte(body) == expected


def test_v3_second_poll_carries_the_cookie() -> None:
    request = HttpRequest(
        V2_REQUEST.replace(IOS_HEADERS, ANDROID_HEADERS).replace(
            "\n{}\n", '\n{"cookie":{"model_version":2,"device_selection_id":2}}\n'
        )
    )
    task = protocol.decode_task_request(request.query, request.body, request.content_type)
    assert task.cookie == Cookie(model_version=2, device_selection_id=2)
    # The device still holds the ticket of that cookie: the same selection id is not a new one.
    session = DeviceSession.new(ANDROID_ID, Platform.ANDROID, 0.0)
    session = protocol.step(session, protocol.Selected(ticket=2, now=1.0))
    with pytest.raises(InvalidTransition):
        protocol.step(session, protocol.Selected(ticket=task.cookie.device_selection_id, now=2.0))


# ---------------------------------------------------------------------------------------------
# V4: Android reports the XOR result

V4_REQUEST = f"""POST /result?job_id={JOB}&task_id={TASK}&task_name=train HTTP/1.1
Content-Type: application/json; charset=utf-8
{ANDROID_HEADERS}

{{"result":{{"kind":"number",
  "data":{{
   "net.linear1.weight":{{"shape":[4,2],"sizes":[4,2],"data":[0.0012,-0.0031,1.0E-4,0.0,-0.0025,0.0018,0.0007,-4.2E-4]}},
   "net.linear1.bias":{{"shape":[4],"sizes":[4],"data":[0.0009,-0.0011,0.0003,-0.0002]}},
   "net.linear2.weight":{{"shape":[2,4],"sizes":[2,4],"data":[-0.0041,0.0022,0.0015,-0.0008,0.0041,-0.0022,-0.0015,0.0008]}},
   "net.linear2.bias":{{"shape":[2],"sizes":[2],"data":[-0.0035,0.0035]}}}},
  "meta":{{"learning_rate":1.0E-4,"batch_size":1,"method":"xor","epochs":3}}}},
 "cookie":{{"model_version":2,"device_selection_id":2}}}}
"""
V4_RESPONSE = '{"status":"OK","task_id":"c0a8e1f4-2b7d-4c6e-9f13-5d2a8b4e6c71","task_name":"train"}'
V4_EXPECTED = {
    "linear1.weight": np.array(
        [[0.0012, -0.0031], [0.0001, 0.0], [-0.0025, 0.0018], [0.0007, -0.00042]],
        dtype=np.float32,
    ),
    "linear1.bias": np.array([0.0009, -0.0011, 0.0003, -0.0002], dtype=np.float32),
    "linear2.weight": np.array(
        [[-0.0041, 0.0022, 0.0015, -0.0008], [0.0041, -0.0022, -0.0015, 0.0008]],
        dtype=np.float32,
    ),
    "linear2.bias": np.array([-0.0035, 0.0035], dtype=np.float32),
}


def _decode_v4(request: HttpRequest) -> tuple[protocol.ResultReport, dict[str, np.ndarray]]:
    report = protocol.decode_result_report(request.query, request.body, request.content_type)
    return report, protocol.decode_tensor_map(report.result.data, XOR_SCHEMA)


def _assert_v4_arrays(arrays: dict[str, np.ndarray]) -> None:
    assert arrays.keys() == V4_EXPECTED.keys()
    for name, expected in V4_EXPECTED.items():
        assert arrays[name].dtype == np.float32
        assert arrays[name].flags.c_contiguous
        np.testing.assert_array_equal(arrays[name], expected)


def test_v4_android_reports() -> None:
    request = HttpRequest(V4_REQUEST)
    assert protocol.parse_identity(request.headers).header_platform is Platform.ANDROID
    report, arrays = _decode_v4(request)
    assert (report.job_id, report.task_id, report.task_name, report.status) == (
        JOB,
        TASK,
        "train",
        "OK",
    )
    assert report.cookie == Cookie(model_version=2, device_selection_id=2)
    assert report.result.kind == "number"
    assert report.result.meta == {
        "learning_rate": 1.0e-4,
        "batch_size": 1,
        "method": "xor",
        "epochs": 3,
    }
    _assert_v4_arrays(arrays)
    reply = ResultReply(status=Status.OK, task_id=report.task_id, task_name=report.task_name)
    assert protocol.encode_reply(reply) == spec_json(V4_RESPONSE)


def test_v4b_ios_form() -> None:
    text = V4_REQUEST.replace(ANDROID_HEADERS, IOS_HEADERS).replace(
        '"kind":"number"', '"kind":"et_tensor_diff"'
    )
    for shape, strides in (("[4,2]", "[2,1]"), ("[4]", "[1]"), ("[2,4]", "[4,1]"), ("[2]", "[1]")):
        text = text.replace(f'"shape":{shape},', f'"strides":{strides},', 1)
    text = text.replace(
        '"meta":{"learning_rate":1.0E-4,"batch_size":1,"method":"xor","epochs":3}',
        '"meta":{"training_completed":true,"timestamp":1733241600.5,"epochs":3,"learning_rate":0.0001,'
        '"batch_size":1,"dataset":"app_cpp_dataset","architecture":"executorch_native",'
        '"config_args":["batch_size","learning_rate"]}',
    )
    assert '"shape"' not in text
    request = HttpRequest(text)
    assert protocol.parse_identity(request.headers).header_platform is Platform.IOS
    report, arrays = _decode_v4(request)
    assert report.result.kind == "et_tensor_diff"
    assert report.result.meta["training_completed"] is True
    _assert_v4_arrays(arrays)


def test_v4c_python_nested_form() -> None:
    text = V4_REQUEST.replace(
        '"shape":[4,2],"sizes":[4,2],"data":[0.0012,-0.0031,1.0E-4,0.0,-0.0025,0.0018,0.0007,-4.2E-4]',
        '"sizes":[4,2],"data":[[0.0012,-0.0031],[0.0001,0.0],[-0.0025,0.0018],[0.0007,-0.00042]]',
    ).replace(
        '"shape":[2,4],"sizes":[2,4],"data":[-0.0041,0.0022,0.0015,-0.0008,0.0041,-0.0022,-0.0015,0.0008]',
        '"sizes":[2,4],"data":[[-0.0041,0.0022,0.0015,-0.0008],[0.0041,-0.0022,-0.0015,0.0008]]',
    )
    assert "[[0.0012" in text
    assert "[[-0.0041" in text
    _, arrays = _decode_v4(HttpRequest(text))
    _assert_v4_arrays(arrays)


def test_v4d_wrong_sizes_is_an_invalid_result() -> None:
    text = V4_REQUEST.replace('"shape":[2],"sizes":[2]', '"shape":[2],"sizes":[3]')
    request = HttpRequest(text)
    report = protocol.decode_result_report(request.query, request.body, request.content_type)
    with pytest.raises(InvalidResult) as info:
        protocol.decode_tensor_map(report.result.data, XOR_SCHEMA)
    error = info.value
    assert error.tensor == "net.linear2.bias"
    assert "net.linear2.bias" in error.message
    assert "sizes" in error.message
    assert (error.status_hint, error.edip_status) == (200, "ERROR")
    reply = ResultReply(
        status=Status(error.edip_status),
        task_id=report.task_id,
        task_name=report.task_name,
        message=error.message,
    )
    obj = orjson.loads(protocol.encode_reply(reply))
    assert obj == {
        "status": "ERROR",
        "task_id": TASK,
        "task_name": "train",
        "message": error.message,
    }


def test_v4e_the_same_body_twice() -> None:
    """Both posts decode alike; the session accepts the first report and refuses the second."""
    first, first_arrays = _decode_v4(HttpRequest(V4_REQUEST))
    second, second_arrays = _decode_v4(HttpRequest(V4_REQUEST))
    assert first == second
    for name in XOR_SCHEMA:
        np.testing.assert_array_equal(first_arrays[name], second_arrays[name])
    session = DeviceSession.new(ANDROID_ID, Platform.ANDROID, 0.0)
    session = protocol.step(session, protocol.Selected(ticket=2, now=1.0))
    session = protocol.step(
        session, TaskDelivered(ticket=2, task_id=TASK, model_version=2, now=2.0)
    )
    session = protocol.step(session, Reported(task_id=first.task_id, now=3.0))
    assert session.reports == 1
    with pytest.raises(InvalidTransition) as info:
        protocol.step(session, Reported(task_id=second.task_id, now=4.0))
    assert info.value.status_hint == 409
    assert session.reports == 1


def test_v4f_old_cookie_version_is_kept_for_the_server_to_judge() -> None:
    text = V4_REQUEST.replace('"cookie":{"model_version":2', '"cookie":{"model_version":1')
    report, arrays = _decode_v4(HttpRequest(text))
    assert report.cookie == Cookie(model_version=1, device_selection_id=2)
    _assert_v4_arrays(arrays)


# ---------------------------------------------------------------------------------------------
# V5: header errors

V5_NO_ID = f"""POST /task?job_id={JOB} HTTP/1.1
Content-Type: application/json

{{}}
"""


def test_v5_missing_device_id() -> None:
    request = HttpRequest(V5_NO_ID)
    with pytest.raises(protocol.MissingDeviceId) as info:
        protocol.parse_identity(request.headers)
    assert info.value.status_hint == 400
    assert protocol.encode_reply(info.value.to_body()) == spec_json(
        '{"status":"INVALID_REQUEST","message":"Device ID missing"}'
    )


def test_v5_device_id_mismatch() -> None:
    headers = {"X-Flare-Device-ID": "dev-1", "X-Flare-Device-Info": "device_id=dev-2&platform=ios"}
    with pytest.raises(protocol.DeviceIdMismatch) as info:
        protocol.parse_identity(headers)
    assert info.value.status_hint == 400
    assert protocol.encode_reply(info.value.to_body()) == spec_json(
        '{"status":"INVALID_REQUEST","message":"Device ID mismatch: X-Flare-Device-ID does not '
        'match X-Flare-Device-Info"}'
    )


def test_v5_missing_task_name() -> None:
    request = HttpRequest(V4_REQUEST.replace("&task_name=train", ""))
    assert "task_name" not in request.query
    with pytest.raises(protocol.MalformedRequest) as info:
        protocol.decode_result_report(request.query, request.body, request.content_type)
    assert info.value.status_hint == 400
    assert protocol.encode_reply(info.value.to_body()) == spec_json(
        '{"status":"INVALID_REQUEST","message":"missing task_name"}'
    )


# ---------------------------------------------------------------------------------------------
# V6: after the job finished


def test_v6_finished_job() -> None:
    request = HttpRequest(
        V2_REQUEST.replace(IOS_HEADERS, ANDROID_HEADERS).replace(
            "\n{}\n", '\n{"cookie":{"model_version":10,"device_selection_id":9}}\n'
        )
    )
    task = protocol.decode_task_request(request.query, request.body, request.content_type)
    assert task.cookie == Cookie(model_version=10, device_selection_id=9)
    done = protocol.encode_reply(TaskReply(status=Status.DONE, job_id=task.job_id))
    assert done == spec_json(f'{{"status":"DONE","job_id":"{JOB}"}}')


def test_v6_never_seen_job() -> None:
    assert protocol.encode_reply(TaskReply(status=Status.NO_JOB)) == b'{"status":"NO_JOB"}'


# ---------------------------------------------------------------------------------------------
# V7: simulator selection

V7_REQUEST = f"""POST /selection?job_id={JOB} HTTP/1.1
X-Flare-Device-ID: 7d6c0f7e-1111-4a2b-9c3d-123456789abc?3
X-Flare-Device-Info: app_name=flare_mobile&app_version=1.0&platform=None&platform_version=None

{{}}
"""
V7_RESPONSE = (
    '{"status":"OK","job_id":"3b8d6f2a-9c41-4e7b-a5d2-0f6e1c9b7a35",'
    '"task_id":"c0a8e1f4-2b7d-4c6e-9f13-5d2a8b4e6c71",'
    '"selection":{"7d6c0f7e-1111-4a2b-9c3d-123456789abc#1":2,"NVFlare_Android-8f14e45fceea167a":2}}'
)


def test_v7_simulator_selection() -> None:
    request = HttpRequest(V7_REQUEST)
    assert request.content_type is None  # the spec request sends none: tolerated for "{}"
    identity = protocol.parse_identity(request.headers)
    assert identity.device_id == "7d6c0f7e-1111-4a2b-9c3d-123456789abc?3"
    assert identity.device_info["platform"] == "None"
    assert protocol.resolve_platform(identity, None) is Platform.GENERIC

    selection = protocol.decode_selection_request(request.query, request.body, request.content_type)
    assert selection == protocol.SelectionRequest(job_id=JOB)
    reply = SelectionReply(
        status=Status.OK,
        job_id=JOB,
        task_id=TASK,
        selection={"7d6c0f7e-1111-4a2b-9c3d-123456789abc#1": 2, ANDROID_ID: 2},
    )
    assert protocol.encode_reply(reply) == spec_json(V7_RESPONSE)
