"""h11's fuzz invariant for EDIP: any input decodes to a message or raises ProtocolError.

Nothing else may escape a decoder: not ``KeyError``, not ``RecursionError``, not a cbor2 or numpy
exception. Inputs are raw bytes, arbitrary JSON documents (as JSON and as CBOR), valid encodings
with a few bytes damaged, and arbitrary header maps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import cbor2
import numpy as np
import orjson
from hypothesis import example, given
from hypothesis import strategies as st

import protocol
from protocol import ProtocolError
from tests import strategies as sts

Query = Mapping[str, str]

DECODERS: dict[str, Callable[[Query, bytes, str | None], object]] = {
    "job": lambda _query, body, content_type: protocol.decode_job_request(body, content_type),
    "task": protocol.decode_task_request,
    "result": protocol.decode_result_report,
    "selection": protocol.decode_selection_request,
}
REPLY_KINDS: list[Any] = [
    protocol.JobReply,
    protocol.TaskReply,
    protocol.ResultReply,
    protocol.SelectionReply,
    protocol.ErrorBody,
]
SCHEMA = {"fc.weight": (2, 3), "fc.bias": (2,), "scale": ()}

queries = st.one_of(
    st.just({"job_id": "J", "task_id": "T", "task_name": "train"}),
    st.dictionaries(
        st.sampled_from(["job_id", "task_id", "task_name", "status", "x"]), st.text(max_size=8)
    ),
)


def decode_all(query: Query, body: bytes, content_type: str | None) -> None:
    """Run every request decoder (and tensor decoding of what a report carries)."""
    for decode in DECODERS.values():
        try:
            message = decode(query, body, content_type)
        except ProtocolError:
            continue
        if isinstance(message, protocol.ResultReport):
            try:
                protocol.decode_tensor_map(message.result.data, SCHEMA)
            except ProtocolError:
                pass


def decode_replies(body: bytes, content_type: str | None) -> None:
    for kind in REPLY_KINDS:
        try:
            protocol.decode_reply(kind, body, content_type)
        except ProtocolError:
            pass


@given(body=st.binary(max_size=200), content_type=sts.content_types, query=queries)
def test_any_bytes(body: bytes, content_type: str | None, query: Query) -> None:
    decode_all(query, body, content_type)
    decode_replies(body, content_type)


@given(value=sts.any_json, query=queries, cbor=st.booleans())
def test_any_json_value(value: Any, query: Query, cbor: bool) -> None:
    body = cbor2.dumps(value) if cbor else orjson.dumps(value)
    content_type = protocol.media_type(cbor=cbor)
    decode_all(query, body, content_type)
    decode_replies(body, content_type)


@given(
    value=st.dictionaries(
        st.sampled_from(["job_name", "capabilities", "cookie", "result", "job_id", "status"]),
        sts.cbor_values,
    )
    | sts.cbor_values,
    query=queries,
)
@example(value={"job_name": False, "job_id": cbor2.CBORTag(80, b"")}, query={})  # found by fuzzing
def test_any_cbor_value(value: Any, query: Query) -> None:
    body = cbor2.dumps(value)
    decode_all(query, body, protocol.CBOR_CONTENT_TYPE)
    decode_replies(body, protocol.CBOR_CONTENT_TYPE)


@given(
    value=st.dictionaries(
        st.sampled_from(["job_name", "capabilities", "cookie", "result", "job_id", "task_name"]),
        sts.any_json,
    ),
    query=queries,
    cbor=st.booleans(),
)
def test_any_json_under_the_keys_decoders_read(
    value: dict[str, Any], query: Query, cbor: bool
) -> None:
    body = cbor2.dumps(value) if cbor else orjson.dumps(value)
    decode_all(query, body, protocol.media_type(cbor=cbor))


@given(data=st.data(), msg=sts.requests, cbor=st.booleans())
def test_damaged_requests(data: st.DataObject, msg: protocol.Request, cbor: bool) -> None:
    body = data.draw(sts.mutated(protocol.encode_request(msg, cbor=cbor)))
    decode_all(protocol.request_query(msg), body, protocol.media_type(cbor=cbor))


@given(data=st.data(), msg=sts.replies, cbor=st.booleans())
def test_damaged_replies(data: st.DataObject, msg: protocol.Reply, cbor: bool) -> None:
    body = data.draw(sts.mutated(protocol.encode_reply(msg, cbor=cbor)))
    decode_replies(body, protocol.media_type(cbor=cbor))


@given(headers=sts.header_maps)
def test_any_headers(headers: dict[str, str]) -> None:
    try:
        identity = protocol.parse_identity(headers)
    except ProtocolError:
        return
    assert 1 <= len(identity.device_id) <= 128
    assert protocol.resolve_platform(identity, None) in set(protocol.Platform)


@given(text=st.text(max_size=100) | sts.info_headers())
def test_any_info_text(text: str) -> None:
    info = protocol.parse_info(text)
    assert all(type(k) is str and type(v) is str for k, v in info.items())


@given(data=st.data())
def test_damaged_tensor_maps(data: st.DataObject) -> None:
    """A valid tensor map with one tensor object, or one field of it, replaced by anything."""
    weights: dict[str, np.ndarray] = {
        "fc.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
        "fc.bias": np.ones(2, dtype=np.float32),
        "scale": np.array(2.0, dtype=np.float32),
    }
    form: protocol.TensorForm = data.draw(st.sampled_from(["android", "ios", "python", "cbor"]))
    tensors: dict[str, Any] = protocol.encode_tensor_map(weights, form)
    name = data.draw(st.sampled_from(sorted(tensors)))
    junk = sts.any_json | st.builds(np.array, st.lists(st.floats(width=32)))
    if data.draw(st.booleans()):
        tensors[name] = data.draw(junk)
    else:
        field = data.draw(st.sampled_from(["sizes", "shape", "strides", "data", "x"]))
        tensors[name] = {**tensors[name], field: data.draw(junk)}
    try:
        arrays = protocol.decode_tensor_map(tensors, SCHEMA)
    except protocol.InvalidResult:
        return  # any other ProtocolError (or exception) fails the test
    for key, shape in SCHEMA.items():
        assert arrays[key].shape == shape
        assert np.isfinite(arrays[key]).all()
