"""Hypothesis strategies: the one home for generated protocol data (attrs keeps its own this way).

Valid messages for round trips, JSON values and raw bytes for the fuzz invariant ("decodes to a
message or raises ProtocolError, nothing else"), header maps in every form the SDKs send, and
near-valid inputs made by mutating valid encodings.
"""

from __future__ import annotations

import base64
import string
from typing import Any
from urllib.parse import urlencode

import cbor2
import numpy as np
import orjson
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import protocol
from protocol import (
    Cookie,
    ErrorBody,
    JobReply,
    JobRequest,
    Platform,
    RawResult,
    ResultReply,
    ResultReport,
    SelectionReply,
    SelectionRequest,
    Status,
    TaskData,
    TaskReply,
    TaskRequest,
)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# ---------------------------------------------------------------------------------------------
# scalars and JSON values

PRINTABLE_ASCII = "".join(chr(c) for c in range(0x20, 0x7F))

device_ids = st.text(alphabet=PRINTABLE_ASCII, min_size=1, max_size=128).filter(
    lambda s: s.strip() == s and s != ""
)
"""Valid ``X-Flare-Device-ID`` values (no surrounding blanks: HTTP strips those)."""

ids = st.one_of(
    st.uuids().map(str),
    st.text(alphabet=string.ascii_letters + string.digits + "-_.", min_size=1, max_size=40),
)
"""Job ids, task ids: non-empty strings."""

texts = st.text(max_size=30)
nonempty_texts = st.text(min_size=1, max_size=30)
positive_ints = st.integers(min_value=1, max_value=INT64_MAX)
counts = st.integers(min_value=0, max_value=INT64_MAX)

json_scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=INT64_MIN, max_value=INT64_MAX),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)


def json_values(*, allow_null: bool, max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """Any JSON value both codecs write and read back equal (lists, never tuples)."""
    leaves = st.one_of(json_scalars, st.none()) if allow_null else json_scalars
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(texts, children, max_size=4),
        ),
        max_leaves=max_leaves,
    )


def json_objects(*, allow_null: bool) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(texts, json_values(allow_null=allow_null), max_size=4)


any_json = json_values(allow_null=True, max_leaves=30)
"""Any JSON document, for the fuzz tests."""

# ---------------------------------------------------------------------------------------------
# messages

cookies = st.builds(
    Cookie,
    model_version=counts,
    device_selection_id=counts,
    extra=st.dictionaries(
        texts.filter(lambda k: k not in ("model_version", "device_selection_id")),
        json_values(allow_null=False, max_leaves=5),
        max_size=2,
    ),
)
optional_cookies = st.none() | cookies

job_requests = st.builds(JobRequest, job_name=texts, capabilities=json_objects(allow_null=True))
task_requests = st.builds(TaskRequest, job_id=ids, cookie=optional_cookies)
selection_requests = st.builds(SelectionRequest, job_id=ids)


finite_float32s = st.floats(width=32, allow_nan=False, allow_infinity=False)


@st.composite
def float32_tensors(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """A small named set of finite float32 tensors (0-d to 3-d, empty dimensions included)."""
    names = draw(
        st.lists(
            st.from_regex(r"[a-z][a-z0-9_]{0,6}(\.[a-z0-9_]{1,6}){0,2}", fullmatch=True),
            min_size=1,
            max_size=4,
            unique=True,
        )
    )
    return {
        name: draw(
            hnp.arrays(
                np.float32,
                hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
                elements=finite_float32s,
            )
        )
        for name in names
    }


tensor_forms = st.sampled_from(["android", "ios", "python"])

raw_results = st.builds(
    RawResult,
    kind=texts,
    data=st.one_of(
        st.tuples(float32_tensors(), tensor_forms).map(
            lambda tf: protocol.encode_tensor_map(tf[0], tf[1])
        ),
        json_objects(allow_null=True),
    ),
    meta=json_objects(allow_null=True),
)

result_reports = st.builds(
    ResultReport,
    job_id=ids,
    task_id=ids,
    task_name=st.one_of(st.just("train"), ids),
    status=st.one_of(st.just("OK"), st.just("ERROR"), nonempty_texts),
    result=raw_results,
    cookie=optional_cookies,
)

requests = st.one_of(job_requests, task_requests, result_reports, selection_requests)

statuses = st.sampled_from(list(Status))
optional_texts = st.none() | texts
optional_ids = st.none() | ids
retry_waits = st.none() | st.integers(min_value=0, max_value=2**31 - 1)

job_datas = st.builds(
    lambda params: {"config": protocol.job_config(params)},
    st.none() | json_objects(allow_null=False),
)
task_datas = st.builds(
    TaskData,
    kind=st.just(protocol.TASK_KIND) | texts,
    data=st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
    meta=st.builds(
        protocol.task_meta,
        st.sampled_from(list(Platform)),
        model_version=positive_ints,
        total_epochs=st.none() | st.integers(1, 10),
        batch_size=st.none() | st.integers(1, 64),
        learning_rate=st.none() | st.floats(1e-6, 1.0),
        method=st.none() | st.sampled_from(["cnn", "xor"]),
        num_rounds=st.none() | st.integers(1, 100),
    ),
)


@st.composite
def job_replies(draw: st.DrawFn) -> JobReply:
    status = draw(statuses)
    if status is Status.OK:
        return JobReply(
            status=status,
            job_id=draw(ids),
            job_name=draw(texts),
            job_data=draw(job_datas),
            retry_wait=draw(retry_waits),
            message=draw(optional_texts),
        )
    return JobReply(
        status=status,
        job_id=draw(optional_ids),
        job_name=draw(optional_texts),
        job_data=draw(st.none() | job_datas),
        retry_wait=draw(retry_waits),
        message=draw(optional_texts),
    )


@st.composite
def task_replies(draw: st.DrawFn) -> TaskReply:
    status = draw(statuses)
    complete = status is Status.OK or draw(st.booleans())
    return TaskReply(
        status=status,
        job_id=draw(optional_ids),
        retry_wait=draw(retry_waits),
        task_id=draw(ids) if complete else draw(optional_ids),
        task_name=draw(st.just("train")) if complete else draw(optional_texts),
        task_data=draw(task_datas) if complete else None,
        cookie=draw(st.none() | cookies),
        message=draw(optional_texts),
    )


result_replies = st.builds(
    ResultReply,
    status=statuses,
    task_id=optional_ids,
    task_name=optional_texts,
    message=optional_texts,
)
selection_replies = st.builds(
    SelectionReply,
    status=statuses,
    job_id=optional_ids,
    task_id=optional_ids,
    selection=st.none() | st.dictionaries(device_ids, counts, max_size=4),
)
error_bodies = st.builds(
    ErrorBody,
    status=statuses,
    message=texts,
    details=st.none() | st.dictionaries(texts, texts, max_size=3),
)

replies = st.one_of(job_replies(), task_replies(), result_replies, selection_replies, error_bodies)

# ---------------------------------------------------------------------------------------------
# headers


@st.composite
def info_headers(draw: st.DrawFn, device_id: str | None = None) -> str:
    """``X-Flare-Device-Info`` text in one of the forms the SDKs send (or garbage)."""
    pairs: dict[str, str] = draw(
        st.dictionaries(st.sampled_from(["app_name", "app_version", "platform", "x"]), texts)
    )
    if device_id is not None and draw(st.booleans()):
        pairs["device_id"] = device_id
    form = draw(st.sampled_from(["raw", "percent", "json", "garbage"]))
    if form == "raw":
        return "&".join(f"{k}={v}" for k, v in pairs.items())
    if form == "percent":
        return urlencode(pairs)
    if form == "json":
        return orjson.dumps(pairs).decode()
    return draw(st.text(max_size=60))


header_names = st.sampled_from(
    [
        "X-Flare-Device-ID",
        "x-flare-device-id",
        "X-FLARE-DEVICE-INFO",
        "X-Flare-Device-Info",
        "x-flare-user-info",
        "Content-Type",
    ]
)

header_maps = st.dictionaries(
    header_names | st.text(max_size=20), st.text(max_size=80) | info_headers(), max_size=5
)
"""Arbitrary header maps for the "never another exception" invariant."""

# ---------------------------------------------------------------------------------------------
# bytes


def _cbor_tag(child: st.SearchStrategy[Any]) -> st.SearchStrategy[cbor2.CBORTag]:
    typed_array = st.builds(
        cbor2.CBORTag,
        st.sampled_from([64, 80, 81, 82, 83, 84, 85, 86, 87]),
        st.binary(max_size=24),
    )
    any_tag = st.builds(
        cbor2.CBORTag,
        st.sampled_from([0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 37, 40, 256, 258, 55799, 1234]),
        child,
    )
    return typed_array | any_tag


cbor_values: st.SearchStrategy[Any] = st.recursive(
    st.one_of(
        json_scalars,
        st.none(),
        st.binary(max_size=16),
        st.just(cbor2.undefined),
        st.builds(cbor2.CBORSimpleValue, st.integers(0, 19) | st.integers(32, 255)),
        st.floats(),
        st.integers(min_value=-(2**64), max_value=2**64 - 1),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(texts | st.integers() | st.binary(max_size=4), children, max_size=4),
        _cbor_tag(children),
    ),
    max_leaves=25,
)
"""CBOR data items JSON cannot express: bytes, undefined, simple values, NaN, big integers,
non-string keys, semantic tags and typed arrays (well-formed or not)."""


content_types = st.sampled_from(
    [
        None,
        "",
        "application/json",
        "application/json; charset=utf-8",
        "APPLICATION/JSON;charset=UTF-8",
        "application/cbor",
        "application/vnd.x+cbor",
        "text/plain",
        "multipart/form-data; boundary=x",
    ]
)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few bytes flipped, inserted or cut: near-valid input for decoders."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "truncate"]))
        if op == "truncate" and buf:
            del buf[draw(st.integers(0, len(buf) - 1)) :]
        elif op == "insert":
            at = draw(st.integers(0, len(buf)))
            buf[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif buf:
            at = draw(st.integers(0, len(buf) - 1))
            buf[at] ^= draw(st.integers(1, 255))
    return bytes(buf)
