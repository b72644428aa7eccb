"""EDIP, the NVFlare edge-device protocol, without I/O.

Decoders take the bytes, query and headers a web framework hands over and return frozen message
objects, or raise one :class:`ProtocolError` subclass whose ``status_hint`` is the HTTP status to
answer with. Encoders turn messages back into JSON or CBOR. :func:`step` advances a device's
session. Nothing here reads a clock, touches a socket, or imports trio, quart, hypercorn, torch or
executorch.
"""

from __future__ import annotations

from ._codec import (
    CBOR_CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    decode_job_request,
    decode_reply,
    decode_result_report,
    decode_selection_request,
    decode_task_request,
    encode_reply,
    encode_request,
    media_type,
    request_path,
    request_query,
    wants_cbor,
)
from ._device_config import TASK_KIND, TASK_NAME, job_config, task_meta
from ._errors import (
    DeviceIdMismatch,
    Forbidden,
    InvalidResult,
    InvalidTransition,
    MalformedReply,
    MalformedRequest,
    MethodNotAllowed,
    MissingDeviceId,
    NotFound,
    PayloadTooLarge,
    ProtocolError,
    UnsupportedMediaType,
)
from ._headers import (
    DEVICE_ID_HEADER,
    DEVICE_INFO_HEADER,
    USER_INFO_HEADER,
    DeviceIdentity,
    parse_identity,
    parse_info,
    resolve_platform,
    retry_wait,
)
from ._machine import (
    TRANSITIONS,
    DeviceExpired,
    DeviceSession,
    Polled,
    Released,
    Reported,
    Selected,
    SessionEvent,
    SessionState,
    TaskDelivered,
    TicketExpired,
    expiry_event,
    step,
)
from ._messages import (
    Cookie,
    ErrorBody,
    JobReply,
    JobRequest,
    Platform,
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
from ._tensors import NET_PREFIX, TensorForm, decode_tensor_map, encode_tensor_map

__all__ = [
    "CBOR_CONTENT_TYPE",
    "DEVICE_ID_HEADER",
    "DEVICE_INFO_HEADER",
    "JSON_CONTENT_TYPE",
    "NET_PREFIX",
    "TASK_KIND",
    "TASK_NAME",
    "TRANSITIONS",
    "USER_INFO_HEADER",
    "Cookie",
    "DeviceExpired",
    "DeviceIdMismatch",
    "DeviceIdentity",
    "DeviceSession",
    "ErrorBody",
    "Forbidden",
    "InvalidResult",
    "InvalidTransition",
    "JobReply",
    "JobRequest",
    "MalformedReply",
    "MalformedRequest",
    "MethodNotAllowed",
    "MissingDeviceId",
    "NotFound",
    "PayloadTooLarge",
    "Platform",
    "Polled",
    "ProtocolError",
    "RawResult",
    "Released",
    "Reply",
    "Reported",
    "Request",
    "ResultReply",
    "ResultReport",
    "Selected",
    "SelectionReply",
    "SelectionRequest",
    "SessionEvent",
    "SessionState",
    "Status",
    "TaskData",
    "TaskDelivered",
    "TaskReply",
    "TaskRequest",
    "TensorForm",
    "TicketExpired",
    "UnsupportedMediaType",
    "decode_job_request",
    "decode_reply",
    "decode_result_report",
    "decode_selection_request",
    "decode_task_request",
    "decode_tensor_map",
    "encode_reply",
    "encode_request",
    "encode_tensor_map",
    "expiry_event",
    "job_config",
    "media_type",
    "parse_identity",
    "parse_info",
    "request_path",
    "request_query",
    "resolve_platform",
    "retry_wait",
    "step",
    "task_meta",
    "wants_cbor",
]

# Tracebacks and reprs show the public path (httpx does the same).
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("protocol._"):
        try:
            _obj.__module__ = "protocol"
        except (AttributeError, TypeError):
            pass
del _name, _obj
