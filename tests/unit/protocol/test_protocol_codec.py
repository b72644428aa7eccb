"""JSON and CBOR decoding/encoding of every message: content types, bodies, fields, CBOR safety."""

from __future__ import annotations

import re
import struct
from typing import Any

import cbor2
import numpy as np
import orjson
import pytest

import protocol
from protocol import (
    Cookie,
    ErrorBody,
    JobReply,
    JobRequest,
    MalformedReply,
    MalformedRequest,
    RawResult,
    ResultReply,
    ResultReport,
    SelectionReply,
    SelectionRequest,
    Status,
    TaskData,
    TaskReply,
    TaskRequest,
    UnsupportedMediaType,
)

JSON = "application/json"
CBOR = "application/cbor"
Q = {"job_id": "J", "task_id": "T", "task_name": "train"}


def cbor(value: object) -> bytes:
    return cbor2.dumps(value)


# ---------------------------------------------------------------------------------------------
# content types and bodies


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
        "application/vnd.edgefl+json",
        None,  # curl without -H: tolerated for a JSON-looking body
        "",
    ],
)
def test_json_content_types(content_type: str | None) -> None:
    job = protocol.decode_job_request(b' {"job_name":"j"}', content_type)
    assert job == JobRequest(job_name="j")


@pytest.mark.parametrize("content_type", ["application/cbor", "application/vnd.x+cbor"])
def test_cbor_content_types(content_type: str) -> None:
    assert protocol.decode_job_request(cbor({"job_name": "j"}), content_type).job_name == "j"


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
def test_other_content_types_are_415(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaType, match="unsupported Content-Type") as info:
        protocol.decode_job_request(b'{"job_name":"j"}', content_type)
    assert info.value.status_hint == 415


def test_missing_content_type_on_a_non_json_body_is_415() -> None:
    with pytest.raises(UnsupportedMediaType, match="missing Content-Type"):
        protocol.decode_job_request(cbor({"job_name": "j"}), None)


@pytest.mark.parametrize("body", [b"", b"  \r\n"])
def test_empty_body_is_tolerated_on_task_and_selection(body: bytes) -> None:
    assert protocol.decode_task_request({"job_id": "J"}, body, None) == TaskRequest(job_id="J")
    assert protocol.decode_task_request({"job_id": "J"}, body, JSON) == TaskRequest(job_id="J")
    assert protocol.decode_selection_request({"job_id": "J"}, body, None) == SelectionRequest(
        job_id="J"
    )


def test_empty_body_is_refused_on_job_and_result() -> None:
    with pytest.raises(MalformedRequest, match="body is empty"):
        protocol.decode_job_request(b"", JSON)
    with pytest.raises(MalformedRequest, match="body is empty"):
        protocol.decode_result_report(Q, b"", JSON)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"[]", "got an array"),
        (b"null", "got null"),
        (b'"x"', "got a string"),
        (b"12", "got a number"),
        (b"true", "got a boolean"),
    ],
)
def test_body_must_be_an_object(body: bytes, words: str) -> None:
    with pytest.raises(MalformedRequest, match=words):
        protocol.decode_task_request({"job_id": "J"}, body, JSON)


@pytest.mark.parametrize(
    "body",
    [b"{", b'{"job_name": NaN}', b'{"job_name": "j", "x": Infinity}', b'{"x": 1e400}', b"\xff"],
)
def test_invalid_json_is_400(body: bytes) -> None:
    with pytest.raises(MalformedRequest, match="not valid JSON") as info:
        protocol.decode_job_request(body, JSON)
    assert info.value.status_hint == 400


def test_integers_that_overflow_a_double_are_400() -> None:
    body = b'{"result": {"data": {"w": {"sizes": [1], "data": [1' + b"0" * 400 + b"]}}}}"
    with pytest.raises(MalformedRequest, match="infinity"):
        protocol.decode_result_report(Q, body, JSON)


def test_body_may_be_bytearray_or_memoryview() -> None:
    data = b'{"job_name":"j"}'
    for body in (bytearray(data), memoryview(data)):
        loose: Any = body
        assert protocol.decode_job_request(loose, JSON).job_name == "j"


# ---------------------------------------------------------------------------------------------
# /job


def test_job_request_fields() -> None:
    job = protocol.decode_job_request(
        b'{"job_name":"xor_et","capabilities":{"methods":["xor"]},"device_info":{"device_id":"x"}}',
        JSON,
    )
    # Body keys never carry identity (EDIP 2.4): device_info is simply not part of the message.
    assert job == JobRequest(job_name="xor_et", capabilities={"methods": ["xor"]})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{}", "missing job_name"),
        (b'{"job_name": null}', "missing job_name"),
        (b'{"job_name": 3}', "job_name must be a string, got a number"),
        (b'{"job_name": "j", "capabilities": []}', "capabilities must be an object, got an array"),
        (b'{"job_name": "j", "capabilities": 5}', "capabilities must be an object, got a number"),
    ],
)
def test_job_request_errors(body: bytes, message: str) -> None:
    with pytest.raises(MalformedRequest) as info:
        protocol.decode_job_request(body, JSON)
    assert info.value.message == message


def test_job_request_optional_capabilities_and_empty_name() -> None:
    assert protocol.decode_job_request(b'{"job_name": ""}', JSON) == JobRequest(job_name="")
    job = protocol.decode_job_request(b'{"job_name": "j", "capabilities": null}', JSON)
    assert job.capabilities == {}


def test_huge_integers_become_floats_not_errors_in_free_form_fields() -> None:
    # orjson reads integers beyond 64 bits as floats; they stay finite, hence acceptable.
    job = protocol.decode_job_request(
        b'{"job_name": "j", "capabilities": {"n": 123456789012345678901234567890}}', JSON
    )
    assert job.capabilities == {"n": 1.2345678901234568e29}


# ---------------------------------------------------------------------------------------------
# /task and cookies


def test_task_request_job_id_from_query_then_body() -> None:
    assert protocol.decode_task_request({"job_id": "Q"}, b'{"job_id":"B"}', JSON).job_id == "Q"
    assert protocol.decode_task_request({}, b'{"job_id":"B"}', JSON).job_id == "B"
    assert protocol.decode_task_request({"job_id": ""}, b'{"job_id":"B"}', JSON).job_id == "B"
    with pytest.raises(MalformedRequest) as info:
        protocol.decode_task_request({}, b"{}", JSON)
    assert info.value.message == "missing job_id"


@pytest.mark.parametrize(
    ("cookie", "expected"),
    [
        (None, None),
        ({}, None),
        (
            {"model_version": 2, "device_selection_id": 3},
            Cookie(model_version=2, device_selection_id=3),
        ),
        (
            {"model_version": 2.0, "device_selection_id": 3},
            Cookie(model_version=2, device_selection_id=3),
        ),
        ({"device_selection_id": 3}, Cookie(model_version=0, device_selection_id=3)),
        (
            {"model_version": 2, "device_selection_id": 3, "sig": "abc", "n": [1]},
            Cookie(model_version=2, device_selection_id=3, extra={"sig": "abc", "n": [1]}),
        ),
    ],
)
def test_cookie_decoding(cookie: object, expected: Cookie | None) -> None:
    body = orjson.dumps({"cookie": cookie})
    assert protocol.decode_task_request({"job_id": "J"}, body, JSON).cookie == expected


@pytest.mark.parametrize(
    ("cookie", "message"),
    [
        ("[]", "cookie must be an object, got an array"),
        ('"c"', "cookie must be an object, got a string"),
        ('{"model_version": "2"}', "cookie.model_version must be a non-negative integer, got '2'"),
        (
            '{"model_version": true}',
            "cookie.model_version must be a non-negative integer, got True",
        ),
        ('{"model_version": -1}', "cookie.model_version must be a non-negative integer, got -1"),
        ('{"model_version": 1.5}', "cookie.model_version must be a non-negative integer, got 1.5"),
        (
            '{"device_selection_id": 9223372036854775808}',
            "cookie.device_selection_id must be a non-negative integer",
        ),
        (  # beyond 64 bits: orjson reads a float, which is then out of range
            '{"model_version": 18446744073709551616}',
            "cookie.model_version must be a non-negative integer",
        ),
    ],
)
def test_cookie_errors(cookie: str, message: str) -> None:
    body = b'{"cookie": ' + cookie.encode() + b"}"
    with pytest.raises(MalformedRequest) as info:
        protocol.decode_task_request({"job_id": "J"}, body, JSON)
    assert info.value.message.startswith(message)


def test_error_messages_quote_device_values_briefly() -> None:
    body = orjson.dumps({"cookie": {"model_version": "x" * 10_000}})
    with pytest.raises(MalformedRequest) as info:
        protocol.decode_task_request({"job_id": "J"}, body, JSON)
    assert info.value.message.startswith("cookie.model_version must be a non-negative integer")
    assert len(info.value.message) < 120
    with pytest.raises(MalformedRequest, match="got an object"):
        protocol.decode_task_request({}, b'{"job_id": {}}', JSON)


def test_cookie_extra_must_be_plain_json_in_cbor() -> None:
    body = cbor({"cookie": {"model_version": 1, "device_selection_id": 1, "x": float("nan")}})
    with pytest.raises(MalformedRequest, match=r"cookie: extra\.x: nan is not a finite number"):
        protocol.decode_task_request({"job_id": "J"}, body, CBOR)


# ---------------------------------------------------------------------------------------------
# /result


def _result_body(**extra: object) -> bytes:
    return orjson.dumps({"result": {"kind": "k", "data": {}, "meta": {}}, **extra})


def test_result_ids_from_query() -> None:
    report = protocol.decode_result_report(Q, _result_body(), JSON)
    assert report == ResultReport(
        job_id="J", task_id="T", task_name="train", status="OK", result=RawResult(kind="k")
    )


def test_result_body_fallback_like_the_python_simulator() -> None:
    body = _result_body(task_name="train", status="ERROR", cookie={"model_version": 1})
    report = protocol.decode_result_report({"job_id": "J", "task_id": "T"}, body, JSON)
    assert (report.task_name, report.status) == ("train", "ERROR")
    assert report.cookie == Cookie(model_version=1, device_selection_id=0)


def test_result_query_wins_over_body() -> None:
    body = _result_body(job_id="BJ", task_id="BT", task_name="body", status="ERROR")
    report = protocol.decode_result_report({**Q, "status": "OK"}, body, JSON)
    assert (report.job_id, report.task_id, report.task_name, report.status) == (
        "J",
        "T",
        "train",
        "OK",
    )


@pytest.mark.parametrize(
    ("query", "body", "message"),
    [
        ({}, _result_body(), "missing job_id"),
        ({"job_id": "J"}, _result_body(), "missing task_id"),
        ({"job_id": "J", "task_id": "T"}, _result_body(), "missing task_name"),
        ({"job_id": "J", "task_id": "T", "task_name": ""}, _result_body(), "missing task_name"),
        (Q, b'{"cookie": {}}', "missing result"),
        (Q, b'{"result": null}', "missing result"),
        (Q, b'{"result": []}', "result must be an object, got an array"),
        (Q, b'{"result": {"kind": 1}}', "result.kind must be a string, got a number"),
        (Q, b'{"result": {"data": []}}', "data must be an object, got an array"),
        (Q, b'{"result": {"meta": "m"}}', "meta must be an object, got a string"),
        (
            {"job_id": "J", "task_id": "T"},
            b'{"task_name": 5, "result": {}}',
            "task_name must be a string, got a number",
        ),
        (Q, b'{"status": ["OK"], "result": {}}', "status must be a string, got an array"),
    ],
)
def test_result_errors(query: dict[str, str], body: bytes, message: str) -> None:
    with pytest.raises(MalformedRequest) as info:
        protocol.decode_result_report(query, body, JSON)
    assert info.value.message == message


def test_result_empty_result_object_decodes() -> None:
    """`{"result": {}}` is well-formed; the server answers it ERROR (EDIP 3.2)."""
    report = protocol.decode_result_report(Q, b'{"result": {}}', JSON)
    assert report.result == RawResult()


# ---------------------------------------------------------------------------------------------
# CBOR specifics


def test_cbor_typed_array_decodes_without_copy() -> None:
    values = np.array([1.5, -2.25, 3.0], dtype="<f4")
    body = cbor(
        {"result": {"data": {"w": {"sizes": [3], "data": cbor2.CBORTag(85, values.tobytes())}}}}
    )
    report = protocol.decode_result_report(Q, body, CBOR)
    tensor = report.result.data["w"]
    assert isinstance(tensor, dict)
    array = tensor["data"]
    assert isinstance(array, np.ndarray)
    assert array.dtype == np.float32
    assert not array.flags.owndata  # a view of the bytes cbor2 read
    assert not array.flags.writeable
    np.testing.assert_array_equal(array, values)
    decoded = protocol.decode_tensor_map(report.result.data, {"w": (3,)})["w"]
    assert type(decoded) is np.ndarray
    assert np.shares_memory(decoded, array)


def test_cbor_typed_array_inside_a_number_list_is_refused() -> None:
    one = cbor2.CBORTag(85, np.array([2.0], dtype="<f4").tobytes())
    body = cbor({"result": {"data": {"w": {"sizes": [3], "data": [1.0, one, 3.0]}}}})
    report = protocol.decode_result_report(Q, body, CBOR)
    with pytest.raises(protocol.InvalidResult, match="only numbers"):
        protocol.decode_tensor_map(report.result.data, {"w": (3,)})


def test_cbor_decoded_report_re_encodes_as_json() -> None:
    values = np.array([1.5, -2.25], dtype="<f4")
    body = cbor(
        {"result": {"data": {"w": {"sizes": [2], "data": cbor2.CBORTag(85, values.tobytes())}}}}
    )
    report = protocol.decode_result_report(Q, body, CBOR)
    again = orjson.loads(protocol.encode_request(report))
    assert again["result"]["data"]["w"] == {"sizes": [2], "data": [1.5, -2.25]}


@pytest.mark.parametrize(
    ("tag", "dtype"),
    [(81, ">f4"), (82, ">f8"), (86, "<f8"), (84, "<f2"), (80, ">f2")],
)
def test_cbor_other_float_typed_arrays(tag: int, dtype: str) -> None:
    values = np.array([1.5, -2.25], dtype=dtype)
    body = cbor(
        {"result": {"data": {"w": {"sizes": [2], "data": cbor2.CBORTag(tag, values.tobytes())}}}}
    )
    report = protocol.decode_result_report(Q, body, CBOR)
    arrays = protocol.decode_tensor_map(report.result.data, {"w": (2,)})
    assert arrays["w"].dtype == np.float32
    np.testing.assert_array_equal(arrays["w"], [1.5, -2.25])


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (cbor({"job_name": cbor2.CBORTag(0, "2020-01-01T00:00:00Z")}), "tag 0 is not allowed"),
        (cbor({"job_name": cbor2.CBORTag(2, b"\x01" * 9)}), "tag 2 is not allowed"),  # bignum
        (cbor({"job_name": cbor2.CBORTag(35, "a+")}), "tag 35 is not allowed"),  # regex
        (b"\xa1\x68job_name\xd8\x1c\x81\xd8\x1d\x00", "tag 29 is not allowed"),  # a cycle
        (cbor({"job_name": cbor2.CBORTag(1234, "x")}), "tag 1234 is not allowed"),
        (cbor({"job_name": cbor2.CBORTag(85, "not bytes")}), "must wrap a byte string"),
        (cbor({"job_name": cbor2.CBORTag(85, b"\x00" * 5)}), "whole number"),
        (cbor({"job_name": "j"}) + b"\x00", "trailing bytes"),
        (b"\xa2\x68job_name\x61j\x68job_name\x61k", "not valid CBOR"),  # duplicate key
        (cbor({1: "j"}), "not valid CBOR"),  # non-string key
        (b"\x81" * 100 + b"\x00", "not valid CBOR"),  # nesting too deep
        (b"\x5b" + struct.pack(">Q", 2**60), "not valid CBOR"),  # claims an exabyte
        (b"\xbf", "not valid CBOR"),  # truncated indefinite map
    ],
)
def test_cbor_refusals(body: bytes, words: str) -> None:
    with pytest.raises(MalformedRequest, match=words) as info:
        protocol.decode_job_request(body, CBOR)
    assert info.value.status_hint == 400


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (cbor2.CBORTag(80, b""), "job_id must be a string, got a typed array"),
        (b"J", "job_id must be a string, got a byte string"),
        (cbor2.undefined, "job_id must be a string, got undefined"),
    ],
)
def test_cbor_non_strings_where_strings_belong(value: object, words: str) -> None:
    body = cbor({"job_id": value})
    with pytest.raises(MalformedRequest) as info:
        protocol.decode_task_request({}, body, CBOR)
    assert info.value.message == words


def test_cbor_self_describe_tag_is_accepted() -> None:
    body = b"\xd9\xd9\xf7" + cbor({"job_name": "j"})
    assert protocol.decode_job_request(body, CBOR).job_name == "j"


@pytest.mark.parametrize(
    "capabilities",
    [
        {"b": b"bytes"},
        {"u": cbor2.undefined},
        {"f": float("inf")},
        {"i": -(2**64)},
        {"s": cbor2.CBORSimpleValue(99)},
    ],
)
def test_cbor_values_json_cannot_hold_are_refused(capabilities: dict[str, object]) -> None:
    with pytest.raises(MalformedRequest, match="capabilities"):
        protocol.decode_job_request(cbor({"job_name": "j", "capabilities": capabilities}), CBOR)


# ---------------------------------------------------------------------------------------------
# encoding replies


def test_encode_reply_omits_absent_fields_and_keeps_ints() -> None:
    reply = TaskReply(
        status=Status.RETRY,
        job_id="J",
        retry_wait=5000,
        cookie=Cookie(model_version=3, device_selection_id=4, extra={"sig": "s"}),
    )
    body = protocol.encode_reply(reply)
    assert body == (
        b'{"status":"RETRY","job_id":"J","retry_wait":5000,'
        b'"cookie":{"model_version":3,"device_selection_id":4,"sig":"s"}}'
    )


@pytest.mark.parametrize(
    "reply",
    [
        JobReply(status=Status.NO_JOB, retry_wait=5),
        TaskReply(
            status=Status.OK,
            task_id="T",
            task_name="train",
            task_data=TaskData(
                kind="APP_DEFINED", data="AAAA", meta={"model_version": 1, "lr": 0.5}
            ),
        ),
        ResultReply(status=Status.ERROR, task_id="T", task_name="train", message="bad"),
        SelectionReply(status=Status.OK, job_id="J", selection={"d#0": 1}),
        ErrorBody(status=Status.INVALID_REQUEST, message="m", details={"k": "v"}),
    ],
)
def test_json_and_cbor_replies_carry_the_same_map(reply: protocol.Reply) -> None:
    as_json = orjson.loads(protocol.encode_reply(reply))
    as_cbor = cbor2.loads(protocol.encode_reply(reply, cbor=True))
    assert as_json == as_cbor
    assert None not in _leaves(as_json)
    kind: Any = type(reply)
    assert protocol.decode_reply(kind, protocol.encode_reply(reply), JSON) == reply
    assert protocol.decode_reply(kind, protocol.encode_reply(reply, cbor=True), CBOR) == reply


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def test_encode_reply_refuses_requests() -> None:
    with pytest.raises(TypeError, match="not a reply"):
        protocol.encode_reply(JobRequest(job_name="j"))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# negotiation and media types


@pytest.mark.parametrize(
    ("content_type", "accept", "expected"),
    [
        (None, None, False),
        (JSON, None, False),
        (CBOR, None, True),
        ("application/cbor; x=y", "", True),
        (JSON, CBOR, True),
        (CBOR, JSON, False),
        (JSON, "*/*", False),
        (CBOR, "*/*", True),
        (CBOR, "application/*", True),
        (JSON, "application/json;q=0.5, application/cbor", True),
        (CBOR, "application/cbor;q=0.2, application/json;q=0.9", False),
        (CBOR, "application/cbor;q=0", False),
        (JSON, "text/html", False),
        (CBOR, "text/html", False),
        (CBOR, "application/cbor;q=abc, application/json", False),
        (CBOR, "application/cbor;q=nan", False),
    ],
)
def test_wants_cbor(content_type: str | None, accept: str | None, expected: bool) -> None:
    assert protocol.wants_cbor(content_type, accept) is expected


def test_media_type() -> None:
    assert protocol.media_type(cbor=False) == protocol.JSON_CONTENT_TYPE == "application/json"
    assert protocol.media_type(cbor=True) == protocol.CBOR_CONTENT_TYPE == "application/cbor"


# ---------------------------------------------------------------------------------------------
# client side


def test_request_paths_queries_and_bodies() -> None:
    cookie = Cookie(model_version=2, device_selection_id=3)
    report = ResultReport(
        job_id="J", task_id="T", task_name="train", result=RawResult(kind="k"), cookie=cookie
    )
    cases: list[tuple[protocol.Request, str, dict[str, str], dict[str, Any]]] = [
        (
            JobRequest(job_name="j", capabilities={"methods": []}),
            "/job",
            {},
            {"job_name": "j", "capabilities": {"methods": []}},
        ),
        (TaskRequest(job_id="J"), "/task", {"job_id": "J"}, {}),
        (
            TaskRequest(job_id="J", cookie=cookie),
            "/task",
            {"job_id": "J"},
            {"cookie": {"model_version": 2, "device_selection_id": 3}},
        ),
        (
            report,
            "/result",
            Q,
            {
                "result": {"kind": "k", "data": {}, "meta": {}},
                "cookie": {"model_version": 2, "device_selection_id": 3},
            },
        ),
        (SelectionRequest(job_id="J"), "/selection", {"job_id": "J"}, {}),
    ]
    for msg, path, query, body in cases:
        assert protocol.request_path(msg) == path
        assert protocol.request_query(msg) == query
        assert orjson.loads(protocol.encode_request(msg)) == body
        assert cbor2.loads(protocol.encode_request(msg, cbor=True)) == body


def test_report_status_travels_in_the_query_only_when_not_ok() -> None:
    report = ResultReport(
        job_id="J", task_id="T", task_name="train", status="ERROR", result=RawResult()
    )
    assert protocol.request_query(report) == {**Q, "status": "ERROR"}


def test_client_helpers_refuse_replies() -> None:
    reply: Any = ResultReply(status=Status.OK)
    for helper in (protocol.request_path, protocol.request_query, protocol.encode_request):
        with pytest.raises(TypeError, match="not a request"):
            helper(reply)


@pytest.mark.parametrize(
    ("kind", "body", "words"),
    [
        (TaskReply, b'{"job_id":"J"}', "missing status"),
        (TaskReply, b'{"status":"RUNNING"}', "unknown status 'RUNNING'"),
        (TaskReply, b'{"status":"OK","job_id":"J"}', "an OK task reply needs"),
        (TaskReply, b'{"status":"RETRY","retry_wait":1.5}', "retry_wait must be a non-negative"),
        (
            TaskReply,
            b'{"status":"OK","task_id":"T","task_name":"train","task_data":{"kind":"k","data":{},"meta":{}}}',
            "data must be a string",
        ),
        (JobReply, b'{"status":"OK","job_id":"J","job_data":{"config":{}}}', "components"),
        (JobReply, b'{"status":"OK","job_id":"J","job_data":{}}', "job_data.config"),
        (SelectionReply, b'{"status":"OK","selection":{"d":"1"}}', "selection['d']"),
        (
            ErrorBody,
            b'{"status":"INVALID_REQUEST","message":"m","details":{"k":1}}',
            "details['k']",
        ),
        (ResultReply, b"<html>", "missing Content-Type"),
        (ResultReply, b"[]", "got an array"),
    ],
)
def test_decode_reply_errors(kind: type[Any], body: bytes, words: str) -> None:
    content_type = None if body.startswith(b"<") else JSON
    with pytest.raises(MalformedReply, match=re.escape(words)) as info:
        protocol.decode_reply(kind, body, content_type)
    assert info.value.status_hint == 502


def test_decode_reply_reads_null_as_absent_and_ignores_unknown_keys() -> None:
    reply = protocol.decode_reply(
        TaskReply, b'{"status":"RETRY","job_id":null,"retry_wait":5,"extra":1}', JSON
    )
    assert reply == TaskReply(status=Status.RETRY, retry_wait=5)


def test_decode_reply_refuses_other_kinds() -> None:
    with pytest.raises(TypeError, match="reply class"):
        protocol.decode_reply(JobRequest, b'{"status":"OK"}', JSON)  # type: ignore[type-var]
