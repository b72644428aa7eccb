"""JSON (orjson) and CBOR (cbor2, RFC 8746 typed arrays) for every EDIP message."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from ._messages import (
    ErrorBody,
    JobReply,
    JobRequest,
    Reply,
    Request,
    ResultReply,
    ResultReport,
    SelectionReply,
    SelectionRequest,
    TaskReply,
    TaskRequest,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

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

JSON_CONTENT_TYPE = "application/json"
CBOR_CONTENT_TYPE = "application/cbor"

R = TypeVar("R", JobReply, TaskReply, ResultReply, SelectionReply, ErrorBody)


def decode_job_request(body: bytes, content_type: str | None) -> JobRequest:
    raise NotImplementedError


def decode_task_request(
    query: Mapping[str, str], body: bytes, content_type: str | None
) -> TaskRequest:
    raise NotImplementedError


def decode_result_report(
    query: Mapping[str, str], body: bytes, content_type: str | None
) -> ResultReport:
    raise NotImplementedError


def decode_selection_request(
    query: Mapping[str, str], body: bytes, content_type: str | None
) -> SelectionRequest:
    raise NotImplementedError


def encode_reply(msg: Reply, *, cbor: bool = False) -> bytes:
    raise NotImplementedError


def wants_cbor(content_type: str | None, accept: str | None) -> bool:
    raise NotImplementedError


def media_type(*, cbor: bool) -> str:
    raise NotImplementedError


def encode_request(msg: Request, *, cbor: bool = False) -> bytes:
    raise NotImplementedError


def request_path(msg: Request) -> str:
    raise NotImplementedError


def request_query(msg: Request) -> dict[str, str]:
    raise NotImplementedError


def decode_reply(kind: type[R], body: bytes, content_type: str | None) -> R:
    raise NotImplementedError
