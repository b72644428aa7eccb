"""EDIP messages as frozen, keyword-only attrs classes.

The classes know nothing about JSON or CBOR (``_codec.py`` owns the wire format). They validate
themselves on construction, so a message that exists can always be encoded: integers are ints
(never bools or floats), free-form values are plain JSON values, and replies contain no ``null``
(EDIP §1.5). Absent optional fields are ``None`` and are omitted on the wire.

Requests (device → server): :class:`JobRequest`, :class:`TaskRequest`, :class:`ResultReport`
(carrying a :class:`RawResult`), :class:`SelectionRequest`. Replies (server → device):
:class:`JobReply`, :class:`TaskReply` (carrying :class:`TaskData`), :class:`ResultReply`,
:class:`SelectionReply`, and :class:`ErrorBody` for non-200 answers. :class:`Cookie` travels both
ways.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, TypeAlias

import attrs
from attrs import validators as v

from ._values import INT64_MAX, check_json_object

__all__ = [
    "Cookie",
    "ErrorBody",
    "JobReply",
    "JobRequest",
    "Platform",
    "RawResult",
    "Reply",
    "Request",
    "ResultReply",
    "ResultReport",
    "SelectionReply",
    "SelectionRequest",
    "Status",
    "TaskData",
    "TaskReply",
    "TaskRequest",
]


class Status(enum.StrEnum):
    """The ``status`` words our server sends (EDIP §3.1)."""

    OK = "OK"
    RETRY = "RETRY"
    DONE = "DONE"
    ERROR = "ERROR"
    NO_JOB = "NO_JOB"
    NO_TASK = "NO_TASK"
    INVALID_REQUEST = "INVALID_REQUEST"


class Platform(enum.StrEnum):
    """Client flavour, which decides ``retry_wait`` units and task meta (EDIP §2.5, §3.4, §10.3)."""

    ANDROID = "android"
    IOS = "ios"
    GENERIC = "generic"


# ---------------------------------------------------------------------------------------------
# validators


def _int_field(minimum: int) -> Any:
    """Validator: a real ``int`` (``bool`` excluded) in ``[minimum, INT64_MAX]``."""

    def check(_inst: object, attribute: attrs.Attribute[int], value: object) -> None:
        if type(value) is not int:
            raise TypeError(f"{attribute.name} must be an integer, got {type(value).__name__}")
        if not minimum <= value <= INT64_MAX:
            raise ValueError(
                f"{attribute.name} must be between {minimum} and {INT64_MAX}, got {value}"
            )

    return check


def _optional_int_field(minimum: int) -> Any:
    inner = _int_field(minimum)

    def check(inst: object, attribute: attrs.Attribute[int | None], value: object) -> None:
        if value is not None:
            inner(inst, attribute, value)

    return check


def _str_field(*, nonempty: bool = False) -> Any:
    """Validator: a ``str`` (not empty when ``nonempty``)."""

    def check(_inst: object, attribute: attrs.Attribute[str], value: object) -> None:
        if type(value) is not str:
            raise TypeError(f"{attribute.name} must be a string, got {type(value).__name__}")
        if nonempty and not value:
            raise ValueError(f"{attribute.name} must not be empty")

    return check


def _optional_str_field() -> Any:
    inner = _str_field()

    def check(inst: object, attribute: attrs.Attribute[str | None], value: object) -> None:
        if value is not None:
            inner(inst, attribute, value)

    return check


def _json_object(*, allow_null: bool, optional: bool = False) -> Any:
    """Validator: a mapping holding plain JSON values (see ``_values.check_json_value``)."""

    def check(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None and optional:
            return
        check_json_object(value, where=attribute.name, allow_null=allow_null)

    return check


def _str_keyed_mapping(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """Validator: a ``dict`` with ``str`` keys (values are checked elsewhere)."""
    if not isinstance(value, dict):
        raise TypeError(f"{attribute.name} must be an object, got {type(value).__name__}")
    for key in value:
        if type(key) is not str:
            raise TypeError(f"{attribute.name}: keys must be strings, got {key!r}")


# ---------------------------------------------------------------------------------------------
# shared


@attrs.frozen(kw_only=True)
class Cookie:
    """The opaque token a device echoes back to ``/task`` and ``/result`` (EDIP §5.4).

    ``0`` in either field means the device sent the cookie without that key (the reference reads
    a missing ``device_selection_id`` as 0, and a missing ``model_version`` as "no version").
    Extra keys (e.g. a signature) survive a round trip through both SDKs and are kept in ``extra``.
    """

    model_version: int = attrs.field(validator=_int_field(0))
    device_selection_id: int = attrs.field(validator=_int_field(0))
    extra: Mapping[str, object] = attrs.field(
        factory=dict, validator=_json_object(allow_null=False)
    )

    @extra.validator
    def _check_extra_keys(self, _attribute: attrs.Attribute[Any], value: Mapping[str, Any]) -> None:
        for key in ("model_version", "device_selection_id"):
            if key in value:
                raise ValueError(f"extra must not contain {key!r}; use the field")


# ---------------------------------------------------------------------------------------------
# requests


@attrs.frozen(kw_only=True)
class JobRequest:
    """``POST /job`` body (EDIP §4.1).

    ``job_name`` may be empty: the reference (and our server) answers that with a 200
    ``INVALID_REQUEST`` reply, not a 400. ``capabilities`` is optional; ``{}`` when absent.
    """

    job_name: str = attrs.field(validator=_str_field())
    capabilities: Mapping[str, object] = attrs.field(
        factory=dict, validator=_json_object(allow_null=True)
    )


@attrs.frozen(kw_only=True)
class TaskRequest:
    """``POST /task``: ``job_id`` from the query string, the cookie from the body (EDIP §5.1)."""

    job_id: str = attrs.field(validator=_str_field(nonempty=True))
    cookie: Cookie | None = attrs.field(default=None, validator=v.optional(v.instance_of(Cookie)))


@attrs.frozen(kw_only=True)
class RawResult:
    """The result DXO of a report (EDIP §6.2), tensors still in wire form.

    ``data`` maps parameter names to tensor objects; :func:`protocol.decode_tensor_map` validates
    and converts it against the model's schema. It is only checked to be a string-keyed mapping
    here: its values may be large and are validated once, by that function.
    """

    kind: str = attrs.field(default="", validator=_str_field())
    data: Mapping[str, object] = attrs.field(factory=dict, validator=_str_keyed_mapping)
    meta: Mapping[str, object] = attrs.field(factory=dict, validator=_json_object(allow_null=True))


@attrs.frozen(kw_only=True)
class ResultReport:
    """``POST /result`` (EDIP §6.1).

    ``status`` is the device's own report status (default ``"OK"``); any other value is answered
    with ``ERROR`` by the server. It is a free string: devices may send words we do not define.
    """

    job_id: str = attrs.field(validator=_str_field(nonempty=True))
    task_id: str = attrs.field(validator=_str_field(nonempty=True))
    task_name: str = attrs.field(validator=_str_field(nonempty=True))
    status: str = attrs.field(default="OK", validator=_str_field(nonempty=True))
    result: RawResult = attrs.field(validator=v.instance_of(RawResult))
    cookie: Cookie | None = attrs.field(default=None, validator=v.optional(v.instance_of(Cookie)))


@attrs.frozen(kw_only=True)
class SelectionRequest:
    """``POST /selection``, the Python simulator's extension (EDIP §7)."""

    job_id: str = attrs.field(validator=_str_field(nonempty=True))


# ---------------------------------------------------------------------------------------------
# replies


@attrs.frozen(kw_only=True)
class TaskData:
    """``task_data`` of an ``OK`` task reply (EDIP §10.1): ``data`` is the base64 ``.pte``."""

    kind: str = attrs.field(validator=_str_field())
    data: str = attrs.field(validator=_str_field())
    meta: Mapping[str, object] = attrs.field(validator=_json_object(allow_null=False))


def _check_job_data(job_data: Mapping[str, Any]) -> None:
    """EDIP §4.4: ``job_data.config`` must be an object with a ``components`` array."""
    config = job_data.get("config")
    if not isinstance(config, Mapping):
        raise ValueError("job_data.config must be an object (both SDKs fail without it)")
    if not isinstance(config.get("components"), list | tuple):
        raise ValueError("job_data.config.components must be an array")


@attrs.frozen(kw_only=True)
class JobReply:
    """``POST /job`` reply (EDIP §4.3). ``OK`` needs ``job_id``, ``job_name`` and ``job_data``."""

    status: Status = attrs.field(validator=v.instance_of(Status))
    job_id: str | None = attrs.field(default=None, validator=_optional_str_field())
    job_name: str | None = attrs.field(default=None, validator=_optional_str_field())
    job_data: Mapping[str, object] | None = attrs.field(
        default=None, validator=_json_object(allow_null=False, optional=True)
    )
    retry_wait: int | None = attrs.field(default=None, validator=_optional_int_field(0))
    message: str | None = attrs.field(default=None, validator=_optional_str_field())

    def __attrs_post_init__(self) -> None:
        if self.job_data is not None:
            _check_job_data(self.job_data)
        if self.status is Status.OK and (
            self.job_id is None or self.job_name is None or self.job_data is None
        ):
            # iOS ends the session on an OK without job_id and job_name (EDIP §3.3).
            raise ValueError("an OK job reply needs job_id, job_name and job_data")


@attrs.frozen(kw_only=True)
class TaskReply:
    """``POST /task`` reply (EDIP §5.3). ``OK`` needs ``task_id``, ``task_name``, ``task_data``."""

    status: Status = attrs.field(validator=v.instance_of(Status))
    job_id: str | None = attrs.field(default=None, validator=_optional_str_field())
    retry_wait: int | None = attrs.field(default=None, validator=_optional_int_field(0))
    task_id: str | None = attrs.field(default=None, validator=_optional_str_field())
    task_name: str | None = attrs.field(default=None, validator=_optional_str_field())
    task_data: TaskData | None = attrs.field(
        default=None, validator=v.optional(v.instance_of(TaskData))
    )
    cookie: Cookie | None = attrs.field(default=None, validator=v.optional(v.instance_of(Cookie)))
    message: str | None = attrs.field(default=None, validator=_optional_str_field())

    def __attrs_post_init__(self) -> None:
        if self.status is Status.OK and (
            self.task_id is None or self.task_name is None or self.task_data is None
        ):
            # Android crashes and iOS loops on an OK without a complete task (EDIP §3.3).
            raise ValueError("an OK task reply needs task_id, task_name and task_data")


@attrs.frozen(kw_only=True)
class ResultReply:
    """``POST /result`` reply (EDIP §6.4)."""

    status: Status = attrs.field(validator=v.instance_of(Status))
    task_id: str | None = attrs.field(default=None, validator=_optional_str_field())
    task_name: str | None = attrs.field(default=None, validator=_optional_str_field())
    message: str | None = attrs.field(default=None, validator=_optional_str_field())


def _check_selection(
    _inst: object, attribute: attrs.Attribute[Any], value: Mapping[str, int] | None
) -> None:
    if value is None:
        return
    _str_keyed_mapping(_inst, attribute, value)
    for device_id, selection_id in value.items():
        if type(selection_id) is not int or not 0 <= selection_id <= INT64_MAX:
            raise ValueError(
                f"selection[{device_id!r}] must be a non-negative integer, got {selection_id!r}"
            )


@attrs.frozen(kw_only=True)
class SelectionReply:
    """``POST /selection`` reply (EDIP §7): ``selection`` maps device id → selection id."""

    status: Status = attrs.field(validator=v.instance_of(Status))
    job_id: str | None = attrs.field(default=None, validator=_optional_str_field())
    task_id: str | None = attrs.field(default=None, validator=_optional_str_field())
    selection: Mapping[str, int] | None = attrs.field(default=None, validator=_check_selection)


def _check_details(
    _inst: object, attribute: attrs.Attribute[Any], value: Mapping[str, str] | None
) -> None:
    if value is None:
        return
    _str_keyed_mapping(_inst, attribute, value)
    for key, text in value.items():
        if type(text) is not str:
            # Both SDKs type details as string -> string; anything else breaks decoding (§1.5).
            raise TypeError(f"details[{key!r}] must be a string, got {type(text).__name__}")


@attrs.frozen(kw_only=True)
class ErrorBody:
    """The JSON body of every non-200 reply (EDIP §8)."""

    status: Status = attrs.field(validator=v.instance_of(Status))
    message: str = attrs.field(validator=_str_field())
    details: Mapping[str, str] | None = attrs.field(default=None, validator=_check_details)


Request: TypeAlias = JobRequest | TaskRequest | ResultReport | SelectionRequest
Reply: TypeAlias = JobReply | TaskReply | ResultReply | SelectionReply | ErrorBody
