"""The wire format: JSON (orjson) and CBOR (cbor2) for every EDIP message.

JSON is what the SDKs speak (EDIP §1.3, §1.5). CBOR (``application/cbor``) is the opt-in for our
own clients: the same maps, with tensors as RFC 8746 typed arrays (tag 85, float32 little-endian)
instead of decimal float lists, negotiated per request by ``Content-Type`` and ``Accept``
(:func:`wants_cbor`).

Server side, ``decode_*_request`` turn a request's query, body and content type into a message or
raise a :class:`~protocol.ProtocolError` subclass: :class:`~protocol.MalformedRequest` (400) for
anything unparseable or missing, :class:`~protocol.UnsupportedMediaType` (415) for a body that is
neither JSON nor CBOR. :func:`encode_reply` writes replies: no ``null``, ints stay ints, no NaN
(the message classes guarantee the last two), absent optional fields omitted.

Client side (our simulated devices and tests), :func:`encode_request` writes a request body,
:func:`request_path` and :func:`request_query` give the rest of the HTTP request as the SDKs send
it, and :func:`decode_reply` reads a reply or raises :class:`~protocol.MalformedReply`.

CBOR decoding is locked down: cbor2's semantic tags (dates, bignums, regexes, shared references
that could build cycles, ...) are refused, map keys must be strings (or byte strings, which the
field checks then refuse), duplicate keys and trailing bytes are errors, nesting is capped, and the
only extension tags are the RFC 8746 float typed arrays, decoded with numpy without another copy.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final, TypeVar

import cbor2
import numpy as np
import orjson

from ._errors import MalformedReply, MalformedRequest, ProtocolError, UnsupportedMediaType
from ._messages import (
    Cookie,
    ErrorBody,
    JobReply,
    JobRequest,
    RawResult,
    Reply,
    Request,
    ResultReply,
    ResultReport,
    SelectionReply,
    SelectionRequest,
    Status,
    TaskData,
    TaskReply,
    TaskRequest,
)
from ._values import INT64_MAX

__all__ = [
    "CBOR_CONTENT_TYPE",
    "JSON_CONTENT_TYPE",
    "decode_job_request",
    "decode_reply",
    "decode_result_report",
    "decode_selection_request",
    "decode_task_request",
    "encode_reply",
    "encode_request",
    "media_type",
    "request_path",
    "request_query",
    "wants_cbor",
]

JSON_CONTENT_TYPE: Final = "application/json"
CBOR_CONTENT_TYPE: Final = "application/cbor"

R = TypeVar("R", JobReply, TaskReply, ResultReply, SelectionReply, ErrorBody)

_JSON, _CBOR = "json", "cbor"

# ---------------------------------------------------------------------------------------------
# content negotiation


def _media_kind(content_type: str | None) -> str | None:
    """``"json"``, ``"cbor"``, ``None`` (no content type), or the unsupported media type itself."""
    if content_type is None:
        return None
    media = content_type.partition(";")[0].strip().lower()
    if not media:
        return None
    if media == JSON_CONTENT_TYPE or (media.startswith("application/") and media.endswith("+json")):
        return _JSON
    if media == CBOR_CONTENT_TYPE or (media.startswith("application/") and media.endswith("+cbor")):
        return _CBOR
    return media


def media_type(*, cbor: bool) -> str:
    """The ``Content-Type`` of a body written with ``cbor=cbor``."""
    return CBOR_CONTENT_TYPE if cbor else JSON_CONTENT_TYPE


def _accept_quality(accept: str, media: str) -> float:
    """The quality ``accept`` gives ``media`` (most specific matching range wins; 0 if none)."""
    best_rank, best_q = -1, 0.0
    main_type = media.partition("/")[0]
    for entry in accept.split(","):
        range_, *params = (part.strip() for part in entry.split(";"))
        range_ = range_.lower()
        if range_ == media:
            rank = 2
        elif range_ == f"{main_type}/*":
            rank = 1
        elif range_ == "*/*":
            rank = 0
        else:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:  # also rejects NaN
                    q = 0.0
        if rank > best_rank:
            best_rank, best_q = rank, q
    return best_q


def wants_cbor(content_type: str | None, accept: str | None) -> bool:
    """Whether to answer in CBOR: ``Accept`` decides, the request's own format breaks ties.

    Without ``Accept`` (or when it rates JSON and CBOR equally, e.g. ``*/*``) a CBOR request gets a
    CBOR reply and anything else JSON. The SDKs send JSON and no ``Accept``, so they get JSON.
    """
    request_is_cbor = _media_kind(content_type) == _CBOR
    if accept is None or not accept.strip():
        return request_is_cbor
    cbor_q = _accept_quality(accept, CBOR_CONTENT_TYPE)
    json_q = _accept_quality(accept, JSON_CONTENT_TYPE)
    if cbor_q != json_q:
        return cbor_q > json_q
    return request_is_cbor and cbor_q > 0


# ---------------------------------------------------------------------------------------------
# CBOR

# Tags cbor2 would decode itself (found by probing cbor2 6.3: dates, bignums, decimals, shared
# values, rationals, regexes, MIME, UUIDs, IP addresses, string references, sets, ...); all are
# refused except the self-describe marker 55799, a no-op wrapper.
_CBOR_BUILTIN_TAGS: Final = (
    *(0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100),
    *(256, 258, 260, 261, 1004),
)
_CBOR_SELF_DESCRIBE: Final = 55799
_CBOR_MAX_DEPTH: Final = 64

# RFC 8746 typed arrays of floats: tag -> numpy dtype.
_TYPED_FLOAT_ARRAYS: Final[Mapping[int, np.dtype[Any]]] = {
    80: np.dtype(">f2"),
    81: np.dtype(">f4"),
    82: np.dtype(">f8"),
    84: np.dtype("<f2"),
    85: np.dtype("<f4"),
    86: np.dtype("<f8"),
}
_TAG_FLOAT32_LE: Final = 85


class _RefusedTag(ValueError):
    pass


class _TypedArray(np.ndarray):
    """A decoded RFC 8746 typed array: a plain ndarray that refuses to be read as one float.

    numpy converts a one-element array to a float (deprecated, with a warning), so a typed array
    smuggled into a number list would pass ``array.array("f", list)`` in the tensor decoder. This
    view type makes that a ``TypeError`` (hence an InvalidResult) instead. Zero-copy.
    """

    def __float__(self) -> float:
        raise TypeError("a typed array cannot stand for a single number")


def _refuser(tag: int) -> Callable[[Any, bool], Any]:
    def refuse(_value: object, _immutable: bool) -> object:
        raise _RefusedTag(f"CBOR tag {tag} is not allowed")

    return refuse


def _self_describe(value: object, _immutable: bool) -> object:
    return value


_SEMANTIC_DECODERS: Final[Mapping[int, Callable[[Any, bool], Any]]] = {
    **{tag: _refuser(tag) for tag in _CBOR_BUILTIN_TAGS},
    _CBOR_SELF_DESCRIBE: _self_describe,
}


def _tag_hook(tag: cbor2.CBORTag, _immutable: bool) -> object:
    """Decode RFC 8746 float typed arrays into 1-D numpy arrays; refuse every other tag."""
    dtype = _TYPED_FLOAT_ARRAYS.get(tag.tag)
    if dtype is None:
        raise _RefusedTag(f"CBOR tag {tag.tag} is not allowed")
    payload = tag.value
    if type(payload) is not bytes:
        raise _RefusedTag(f"CBOR typed array (tag {tag.tag}) must wrap a byte string")
    if len(payload) % dtype.itemsize:
        raise _RefusedTag(
            f"CBOR typed array (tag {tag.tag}): {len(payload)} bytes is not a whole number "
            f"of {dtype.itemsize}-byte elements"
        )
    # Zero-copy: a read-only view of the byte string cbor2 just read.
    return np.frombuffer(payload, dtype=dtype).view(_TypedArray)


def _cbor_loads(body: bytes) -> object:
    stream = io.BytesIO(body)
    decoder = cbor2.CBORDecoder(
        stream,
        tag_hook=_tag_hook,
        semantic_decoders=_SEMANTIC_DECODERS,
        max_depth=_CBOR_MAX_DEPTH,
        allow_duplicate_keys=False,
        strict_hashable_types=True,
        # One read of the whole body (a memcpy) instead of many small ones: ~20 % faster for an
        # update. cbor2 seeks back over what it read ahead, so tell() below stays exact.
        read_size=max(len(body), 1),
    )
    value = decoder.decode()
    if stream.tell() != len(body):
        raise _RefusedTag("trailing bytes after the CBOR data item")
    return value


def _refusal(exc: BaseException) -> BaseException:
    """The refusal raised in one of our hooks, which cbor2 wraps in its own error, else ``exc``."""
    seen: BaseException | None = exc
    for _ in range(8):  # the chain is short; bound it anyway
        if seen is None:
            break
        if isinstance(seen, _RefusedTag):
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc


def _cbor_default(encoder: cbor2.CBOREncoder, value: object) -> None:
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        flat = np.ascontiguousarray(value, dtype="<f4").reshape(-1)
        encoder.encode(cbor2.CBORTag(_TAG_FLOAT32_LE, flat.tobytes()))
        return
    raise TypeError(f"cannot encode {type(value).__name__} as CBOR")


def _cbor_dumps(value: object) -> bytes:
    return cbor2.dumps(value, default=_cbor_default)


# ---------------------------------------------------------------------------------------------
# parsing bodies


def _parse_body(
    body: bytes, content_type: str | None, *, empty_ok: bool, error: type[ProtocolError]
) -> dict[str, Any]:
    """The body as a dict: JSON or CBOR by content type; a JSON-looking body may omit the type."""
    if not isinstance(body, bytes):
        body = bytes(body)
    kind = _media_kind(content_type)
    if not body or not body.strip():
        # An empty body needs no content type (GET /task, bodiless POSTs from curl).
        if empty_ok:
            return {}
        raise error("request body is empty; expected a JSON object")
    if kind is None:
        if body.lstrip()[:1] != b"{":
            raise UnsupportedMediaType(
                "missing Content-Type: send application/json or application/cbor"
            )
        kind = _JSON
    if kind == _JSON:
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise error(f"body is not valid JSON: {exc}") from None
    elif kind == _CBOR:
        try:
            value = _cbor_loads(body)
        except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError, OverflowError) as exc:
            raise error(f"body is not valid CBOR: {_refusal(exc)}") from None
    else:
        raise UnsupportedMediaType(
            f"unsupported Content-Type {kind!r}: send application/json or application/cbor"
        )
    if not isinstance(value, dict):
        raise error(f"body must be a JSON object (a CBOR map), got {_kind_name(value)}")
    return value


def _kind_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, np.ndarray):
        return "a typed array"
    if isinstance(value, bytes | bytearray):
        return "a byte string"
    if value is cbor2.undefined:
        return "undefined"
    return type(value).__name__


@contextmanager
def _as(error: type[ProtocolError], where: str) -> Iterator[None]:
    """Turn a message constructor's ``TypeError``/``ValueError`` into ``error``."""
    try:
        yield
    except (TypeError, ValueError) as exc:
        raise error(f"{where}: {exc}") from None


def _query_value(query: Mapping[str, str], key: str) -> str | None:
    try:
        value = query.get(key)
    except (TypeError, ValueError):
        return None
    if isinstance(value, str) and value:
        return value
    return None


def _required_str(
    key: str, query: Mapping[str, str] | None, body: Mapping[str, Any], error: type[ProtocolError]
) -> str:
    """``key`` from the query string, else from the body (EDIP §6.1); 400 ``missing <key>``."""
    value = _optional_str(key, query, body, error)
    if value is None:
        raise error(f"missing {key}")
    return value


def _optional_str(
    key: str, query: Mapping[str, str] | None, body: Mapping[str, Any], error: type[ProtocolError]
) -> str | None:
    if query is not None:
        from_query = _query_value(query, key)
        if from_query is not None:
            return from_query
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise error(f"{key} must be a string, got {_kind_name(value)}")
    return value or None


def _int_like(value: object, where: str, error: type[ProtocolError]) -> int:
    """A non-negative integer; integral floats (``2.0``) are accepted, booleans are not."""
    if type(value) is float and math.isfinite(value) and value.is_integer():
        value = int(value)
    if type(value) is not int or not 0 <= value <= INT64_MAX:
        raise error(f"{where} must be a non-negative integer, got {_brief(value)}")
    return value


def _brief(value: object) -> str:
    """``repr(value)`` cut to a readable length (values come from the device)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _parse_cookie(value: object, error: type[ProtocolError]) -> Cookie | None:
    """The body's ``cookie``: absent, ``null`` or ``{}`` mean no cookie (EDIP §5.1)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise error(f"cookie must be an object, got {_kind_name(value)}")
    if not value:
        return None
    model_version = _int_like(value.get("model_version", 0), "cookie.model_version", error)
    selection_id = _int_like(
        value.get("device_selection_id", 0), "cookie.device_selection_id", error
    )
    extra = {k: v for k, v in value.items() if k not in ("model_version", "device_selection_id")}
    with _as(error, "cookie"):
        return Cookie(model_version=model_version, device_selection_id=selection_id, extra=extra)


def _optional_object(body: Mapping[str, Any], key: str, error: type[ProtocolError]) -> Any:
    value = body.get(key)
    if value is not None and not isinstance(value, Mapping):
        raise error(f"{key} must be an object, got {_kind_name(value)}")
    return value


# ---------------------------------------------------------------------------------------------
# requests (server side)


def decode_job_request(body: bytes, content_type: str | None) -> JobRequest:
    """Decode ``POST /job`` (EDIP §4.1).

    ``capabilities`` is optional (the reference's 400 ``missing methods`` locks out Android apps
    that never set capabilities, V1b); an empty ``job_name`` decodes and is the server's 200
    ``INVALID_REQUEST``. Body keys never override identity: only the headers carry it.

    Raises:
        MalformedRequest: not a JSON object / CBOR map, ``job_name`` missing or not a string,
            ``capabilities`` not an object of plain JSON values.
        UnsupportedMediaType: the content type is neither JSON nor CBOR.
    """
    obj = _parse_body(body, content_type, empty_ok=False, error=MalformedRequest)
    job_name = obj.get("job_name")
    if job_name is None:
        raise MalformedRequest("missing job_name")
    if not isinstance(job_name, str):
        raise MalformedRequest(f"job_name must be a string, got {_kind_name(job_name)}")
    capabilities = _optional_object(obj, "capabilities", MalformedRequest)
    with _as(MalformedRequest, "capabilities"):
        return JobRequest(job_name=job_name, capabilities=capabilities or {})


def decode_task_request(
    query: Mapping[str, str], body: bytes, content_type: str | None
) -> TaskRequest:
    """Decode ``POST /task`` (or ``GET /task?job_id=...``) (EDIP §5.1).

    ``job_id`` comes from the query string (the body is a fallback); an empty body means ``{}``.

    Raises:
        MalformedRequest: ``missing job_id``, a body that is not an object, a malformed cookie.
        UnsupportedMediaType: the content type is neither JSON nor CBOR.
    """
    obj = _parse_body(body, content_type, empty_ok=True, error=MalformedRequest)
    job_id = _required_str("job_id", query, obj, MalformedRequest)
    cookie = _parse_cookie(obj.get("cookie"), MalformedRequest)
    return TaskRequest(job_id=job_id, cookie=cookie)


def _parse_raw_result(value: object, error: type[ProtocolError]) -> RawResult:
    if value is None:
        raise error("missing result")
    if not isinstance(value, Mapping):
        raise error(f"result must be an object, got {_kind_name(value)}")
    kind = value.get("kind")
    if kind is None:
        kind = ""
    elif not isinstance(kind, str):
        raise error(f"result.kind must be a string, got {_kind_name(kind)}")
    data = _optional_object(value, "data", error)
    meta = _optional_object(value, "meta", error)
    with _as(error, "result"):
        return RawResult(
            kind=kind, data=data if data is not None else {}, meta=meta if meta is not None else {}
        )


def decode_result_report(
    query: Mapping[str, str], body: bytes, content_type: str | None
) -> ResultReport:
    """Decode ``POST /result`` (EDIP §6.1).

    ``job_id``, ``task_id``, ``task_name`` and ``status`` are looked up in the query string first,
    then in the body (the Python simulator sends ``task_name`` and ``status`` in the body);
    ``status`` defaults to ``"OK"``. The tensors stay in wire form: validate them with
    :func:`protocol.decode_tensor_map` against the model's schema.

    Raises:
        MalformedRequest: ``missing job_id`` / ``missing task_id`` / ``missing task_name`` /
            ``missing result`` (checked in that order), a body or ``result`` that is not an
            object, a malformed cookie.
        UnsupportedMediaType: the content type is neither JSON nor CBOR.
    """
    obj = _parse_body(body, content_type, empty_ok=False, error=MalformedRequest)
    job_id = _required_str("job_id", query, obj, MalformedRequest)
    task_id = _required_str("task_id", query, obj, MalformedRequest)
    task_name = _required_str("task_name", query, obj, MalformedRequest)
    status = _optional_str("status", query, obj, MalformedRequest) or Status.OK.value
    result = _parse_raw_result(obj.get("result"), MalformedRequest)
    cookie = _parse_cookie(obj.get("cookie"), MalformedRequest)
    return ResultReport(
        job_id=job_id,
        task_id=task_id,
        task_name=task_name,
        status=status,
        result=result,
        cookie=cookie,
    )


def decode_selection_request(
    query: Mapping[str, str], body: bytes, content_type: str | None
) -> SelectionRequest:
    """Decode ``POST /selection`` (EDIP §7): ``job_id`` from the query string, body ``{}``.

    Raises:
        MalformedRequest: ``missing job_id`` or a body that is not an object.
        UnsupportedMediaType: the content type is neither JSON nor CBOR.
    """
    obj = _parse_body(body, content_type, empty_ok=True, error=MalformedRequest)
    return SelectionRequest(job_id=_required_str("job_id", query, obj, MalformedRequest))


# ---------------------------------------------------------------------------------------------
# encoding


def _cookie_obj(cookie: Cookie) -> dict[str, object]:
    return {
        "model_version": cookie.model_version,
        "device_selection_id": cookie.device_selection_id,
        **cookie.extra,
    }


def _without_none(pairs: dict[str, object]) -> dict[str, object]:
    return {key: value for key, value in pairs.items() if value is not None}


def _reply_obj(msg: Reply) -> dict[str, object]:
    match msg:
        case JobReply():
            return _without_none(
                {
                    "status": msg.status.value,
                    "job_id": msg.job_id,
                    "job_name": msg.job_name,
                    "job_data": msg.job_data,
                    "retry_wait": msg.retry_wait,
                    "message": msg.message,
                }
            )
        case TaskReply():
            task_data = msg.task_data
            return _without_none(
                {
                    "status": msg.status.value,
                    "job_id": msg.job_id,
                    "retry_wait": msg.retry_wait,
                    "task_id": msg.task_id,
                    "task_name": msg.task_name,
                    "task_data": None
                    if task_data is None
                    else {"kind": task_data.kind, "data": task_data.data, "meta": task_data.meta},
                    "cookie": None if msg.cookie is None else _cookie_obj(msg.cookie),
                    "message": msg.message,
                }
            )
        case ResultReply():
            return _without_none(
                {
                    "status": msg.status.value,
                    "task_id": msg.task_id,
                    "task_name": msg.task_name,
                    "message": msg.message,
                }
            )
        case SelectionReply():
            return _without_none(
                {
                    "status": msg.status.value,
                    "job_id": msg.job_id,
                    "task_id": msg.task_id,
                    "selection": msg.selection,
                }
            )
        case ErrorBody():
            return _without_none(
                {"status": msg.status.value, "message": msg.message, "details": msg.details}
            )
    raise TypeError(f"not a reply message: {type(msg).__name__}")


def _json_default(value: object) -> object:
    """orjson writes plain ndarrays only; hand it views of subclasses (decoded typed arrays)."""
    if isinstance(value, np.ndarray):
        return value.view(np.ndarray)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _dumps(obj: object, *, cbor: bool) -> bytes:
    if cbor:
        return _cbor_dumps(obj)
    return orjson.dumps(obj, default=_json_default, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_reply(msg: Reply, *, cbor: bool = False) -> bytes:
    """The body of a reply: JSON (default) or CBOR, absent fields omitted (EDIP §1.5)."""
    return _dumps(_reply_obj(msg), cbor=cbor)


# ---------------------------------------------------------------------------------------------
# requests (client side)


def _request_body(msg: Request) -> dict[str, object]:
    match msg:
        case JobRequest():
            return {"job_name": msg.job_name, "capabilities": msg.capabilities}
        case TaskRequest():
            return {} if msg.cookie is None else {"cookie": _cookie_obj(msg.cookie)}
        case ResultReport():
            body: dict[str, object] = {
                "result": {
                    "kind": msg.result.kind,
                    "data": msg.result.data,
                    "meta": msg.result.meta,
                }
            }
            if msg.cookie is not None:
                body["cookie"] = _cookie_obj(msg.cookie)
            return body
        case SelectionRequest():
            return {}
    raise TypeError(f"not a request message: {type(msg).__name__}")


def encode_request(msg: Request, *, cbor: bool = False) -> bytes:
    """The body of a request, as the SDKs write it (ids travel in :func:`request_query`).

    Tensor data given as numpy arrays (``encode_tensor_map(..., "cbor")``) becomes RFC 8746 typed
    arrays in CBOR and number lists in JSON.
    """
    return _dumps(_request_body(msg), cbor=cbor)


def request_path(msg: Request) -> str:
    """The URL path of a request: ``/job``, ``/task``, ``/result`` or ``/selection``."""
    match msg:
        case JobRequest():
            return "/job"
        case TaskRequest():
            return "/task"
        case ResultReport():
            return "/result"
        case SelectionRequest():
            return "/selection"
    raise TypeError(f"not a request message: {type(msg).__name__}")


def request_query(msg: Request) -> dict[str, str]:
    """The query parameters of a request, as the SDKs send them (EDIP §1.1, §6.1).

    A report's ``status`` is only sent when it is not ``OK`` (the SDKs never send it).
    """
    match msg:
        case JobRequest():
            return {}
        case TaskRequest() | SelectionRequest():
            return {"job_id": msg.job_id}
        case ResultReport():
            query = {"job_id": msg.job_id, "task_id": msg.task_id, "task_name": msg.task_name}
            if msg.status != Status.OK.value:
                query["status"] = msg.status
            return query
    raise TypeError(f"not a request message: {type(msg).__name__}")


# ---------------------------------------------------------------------------------------------
# replies (client side)


def _reply_str(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise MalformedReply(f"{key} must be a string, got {_kind_name(value)}")
    return value


def _reply_int(obj: Mapping[str, Any], key: str) -> int | None:
    value = obj.get(key)
    return None if value is None else _int_like(value, key, MalformedReply)


def _reply_status(obj: Mapping[str, Any]) -> Status:
    status = obj.get("status")
    if not isinstance(status, str):
        raise MalformedReply("missing status")
    try:
        return Status(status)
    except ValueError:
        raise MalformedReply(f"unknown status {status!r}") from None


def _task_data(value: object) -> TaskData | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise MalformedReply(f"task_data must be an object, got {_kind_name(value)}")
    # Wrong types (a missing kind, an object as data) fail TaskData's own validators.
    kind: Any = value.get("kind")
    data: Any = value.get("data")
    meta: Any = value.get("meta")
    return TaskData(kind=kind, data=data, meta=meta)


def _selection(value: object) -> dict[str, int] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise MalformedReply(f"selection must be an object, got {_kind_name(value)}")
    return {
        key: _int_like(sid, f"selection[{key!r}]", MalformedReply) for key, sid in value.items()
    }


def decode_reply(kind: type[R], body: bytes, content_type: str | None) -> R:
    """Decode a reply of the expected ``kind`` (``ErrorBody`` for non-200 answers).

    ``null`` fields are read as absent and unknown keys are ignored.

    Raises:
        MalformedReply: not an object, unknown ``status``, a field of the wrong type, or an
            ``OK`` reply missing what the SDKs need.
    """
    try:
        obj = _parse_body(body, content_type, empty_ok=False, error=MalformedReply)
    except UnsupportedMediaType as exc:
        raise MalformedReply(exc.message) from None
    if kind not in (JobReply, TaskReply, ResultReply, SelectionReply, ErrorBody):
        raise TypeError(f"kind must be a reply class, got {kind!r}")
    status = _reply_status(obj)
    reply: Reply
    with _as(MalformedReply, kind.__name__):
        if kind is JobReply:
            reply = JobReply(
                status=status,
                job_id=_reply_str(obj, "job_id"),
                job_name=_reply_str(obj, "job_name"),
                job_data=_optional_object(obj, "job_data", MalformedReply),
                retry_wait=_reply_int(obj, "retry_wait"),
                message=_reply_str(obj, "message"),
            )
        elif kind is TaskReply:
            reply = TaskReply(
                status=status,
                job_id=_reply_str(obj, "job_id"),
                retry_wait=_reply_int(obj, "retry_wait"),
                task_id=_reply_str(obj, "task_id"),
                task_name=_reply_str(obj, "task_name"),
                task_data=_task_data(obj.get("task_data")),
                cookie=_parse_cookie(obj.get("cookie"), MalformedReply),
                message=_reply_str(obj, "message"),
            )
        elif kind is ResultReply:
            reply = ResultReply(
                status=status,
                task_id=_reply_str(obj, "task_id"),
                task_name=_reply_str(obj, "task_name"),
                message=_reply_str(obj, "message"),
            )
        elif kind is SelectionReply:
            reply = SelectionReply(
                status=status,
                job_id=_reply_str(obj, "job_id"),
                task_id=_reply_str(obj, "task_id"),
                selection=_selection(obj.get("selection")),
            )
        else:
            reply = ErrorBody(
                status=status,
                message=_reply_str(obj, "message") or "",
                details=_optional_object(obj, "details", MalformedReply),
            )
    return reply  # type: ignore[return-value]
