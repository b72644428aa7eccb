"""decode(encode(m)) == m for every message, in both codecs (and tensors through every form)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import protocol
from protocol import JobRequest, ResultReport, SelectionRequest, TaskRequest
from tests import strategies as sts

if TYPE_CHECKING:
    from collections.abc import Mapping


def decode_request(msg: protocol.Request, body: bytes, content_type: str) -> protocol.Request:
    query = protocol.request_query(msg)
    match msg:
        case JobRequest():
            return protocol.decode_job_request(body, content_type)
        case TaskRequest():
            return protocol.decode_task_request(query, body, content_type)
        case ResultReport():
            return protocol.decode_result_report(query, body, content_type)
        case SelectionRequest():
            return protocol.decode_selection_request(query, body, content_type)


@given(msg=sts.requests, cbor=st.booleans())
def test_requests_round_trip(msg: protocol.Request, cbor: bool) -> None:
    body = protocol.encode_request(msg, cbor=cbor)
    assert decode_request(msg, body, protocol.media_type(cbor=cbor)) == msg


@given(msg=sts.replies, cbor=st.booleans())
def test_replies_round_trip(msg: protocol.Reply, cbor: bool) -> None:
    body = protocol.encode_reply(msg, cbor=cbor)
    kind: Any = type(msg)
    assert protocol.decode_reply(kind, body, protocol.media_type(cbor=cbor)) == msg


@given(msg=sts.replies)
def test_json_replies_never_hold_null(msg: protocol.Reply) -> None:
    assert b"null" not in protocol.encode_reply(msg).replace(b'"null"', b"")


@given(
    tensors=sts.float32_tensors(),
    form=st.sampled_from(["android", "ios", "python", "cbor"]),
    cbor=st.booleans(),
)
def test_tensor_maps_round_trip(
    tensors: dict[str, np.ndarray], form: protocol.TensorForm, cbor: bool
) -> None:
    report = ResultReport(
        job_id="J",
        task_id="T",
        task_name="train",
        result=protocol.RawResult(data=protocol.encode_tensor_map(tensors, form)),
    )
    body = protocol.encode_request(report, cbor=cbor)
    decoded = decode_request(report, body, protocol.media_type(cbor=cbor))
    assert isinstance(decoded, ResultReport)
    schema = {name: array.shape for name, array in tensors.items()}
    data: Mapping[str, object] = decoded.result.data
    arrays = protocol.decode_tensor_map(data, schema)
    assert arrays.keys() == tensors.keys()
    for name, expected in tensors.items():
        assert arrays[name].dtype == np.float32
        assert arrays[name].shape == expected.shape
        np.testing.assert_array_equal(arrays[name], expected)
