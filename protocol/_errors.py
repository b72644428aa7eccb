"""The protocol error hierarchy.

Every decoder in :mod:`protocol` either returns a message or raises exactly one subclass of
:class:`ProtocolError`; nothing else escapes (the fuzz tests hold the package to this). Each class
carries the HTTP status its reply should use (``status_hint``) and the EDIP ``status`` word of the
JSON error body (``edip_status``, EDIP §8)::

    ProtocolError (abstract; instantiating it directly raises TypeError)
    ├─ MalformedRequest        400  INVALID_REQUEST  bad JSON/CBOR, body not an object, missing keys
    │  ├─ MissingDeviceId      400  INVALID_REQUEST  "Device ID missing"               (EDIP §2.1)
    │  └─ DeviceIdMismatch     400  INVALID_REQUEST  "Device ID mismatch: ..."         (EDIP §2.4)
    ├─ Forbidden               403  INVALID_REQUEST
    ├─ NotFound                404  INVALID_REQUEST  unknown path
    ├─ MethodNotAllowed        405  INVALID_REQUEST
    ├─ InvalidTransition       409  INVALID_REQUEST  device session: illegal event, state unchanged
    ├─ PayloadTooLarge         413  INVALID_REQUEST
    ├─ UnsupportedMediaType    415  INVALID_REQUEST
    ├─ InvalidResult           200  ERROR            a well-formed /result whose payload is unusable
    └─ MalformedReply          502  ERROR            client side: the server's reply is not EDIP

``InvalidResult`` is the one "error" answered with HTTP 200: EDIP §6.4 says an unusable tensor map
gets ``{"status":"ERROR","task_id":…,"task_name":…,"message":…}`` in a normal reply. The server
builds that :class:`~protocol.ResultReply` itself, since only it knows the task id and name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from ._messages import ErrorBody, Status

if TYPE_CHECKING:
    from ._machine import SessionState

__all__ = [
    "DeviceIdMismatch",
    "Forbidden",
    "InvalidResult",
    "InvalidTransition",
    "MalformedReply",
    "MalformedRequest",
    "MethodNotAllowed",
    "MissingDeviceId",
    "NotFound",
    "PayloadTooLarge",
    "ProtocolError",
    "UnsupportedMediaType",
]


class ProtocolError(Exception):
    """Base of every error the protocol layer raises. Abstract: raise a subclass.

    Attributes:
        status_hint: the HTTP status of the reply that reports this error.
        edip_status: the ``status`` word of the EDIP error body.
        message: human-readable text for the body's ``message`` field.
    """

    status_hint: ClassVar[int] = 400
    edip_status: ClassVar[str] = Status.INVALID_REQUEST.value
    default_message: ClassVar[str] = "invalid request"

    message: str

    def __init__(self, message: str | None = None) -> None:
        if type(self) is ProtocolError:
            raise TypeError("ProtocolError is abstract; raise one of its subclasses")
        self.message = self.default_message if message is None else message
        super().__init__(self.message)

    def __reduce__(self) -> tuple[object, ...]:
        # Exceptions pickle as cls(*args); the keyword-only fields of some subclasses would be
        # lost or fail, so rebuild from the instance dict (errors may cross process boundaries).
        return (_restore, (type(self), self.message, self.__dict__.copy()))

    def to_body(self) -> ErrorBody:
        """The EDIP error body (``{"status": ..., "message": ...}``) for this error."""
        return ErrorBody(status=Status(self.edip_status), message=self.message)


def _restore(cls: type[ProtocolError], message: str, state: dict[str, object]) -> ProtocolError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class MalformedRequest(ProtocolError):
    """The request cannot be parsed or lacks a required field (HTTP 400)."""

    status_hint = 400
    default_message = "malformed request"


class MissingDeviceId(MalformedRequest):
    """``X-Flare-Device-ID`` is missing or empty (EDIP §2.1, golden vector V5)."""

    default_message = "Device ID missing"


class DeviceIdMismatch(MalformedRequest):
    """The ``device_id`` in ``X-Flare-Device-Info`` differs from the header ID (EDIP §2.4)."""

    default_message = "Device ID mismatch: X-Flare-Device-ID does not match X-Flare-Device-Info"


class Forbidden(ProtocolError):
    """The request is understood but refused (HTTP 403), e.g. a disabled ``/selection``."""

    status_hint = 403
    default_message = "forbidden"


class NotFound(ProtocolError):
    """Unknown path (HTTP 404, EDIP §8)."""

    status_hint = 404
    default_message = "not found"


class MethodNotAllowed(ProtocolError):
    """Wrong HTTP method for a known path (HTTP 405, EDIP §8)."""

    status_hint = 405
    default_message = "method not allowed"


class PayloadTooLarge(ProtocolError):
    """The request body exceeds the configured limit (HTTP 413, EDIP §1.3)."""

    status_hint = 413
    default_message = "request body too large"


class UnsupportedMediaType(ProtocolError):
    """The body's content type is neither JSON nor CBOR (HTTP 415)."""

    status_hint = 415
    default_message = "unsupported content type"


class InvalidResult(ProtocolError):
    """A well-formed ``/result`` whose tensor map cannot be used (EDIP §6.4).

    Answered with HTTP 200 and ``{"status": "ERROR", ...}``. ``tensor`` names the offending
    tensor (as sent, e.g. ``net.fc1.weight``) when the problem is tied to one.
    """

    status_hint = 200
    edip_status = Status.ERROR.value
    default_message = "invalid result"

    tensor: str | None

    def __init__(self, message: str | None = None, *, tensor: str | None = None) -> None:
        super().__init__(message)
        self.tensor = tensor


class InvalidTransition(ProtocolError):
    """An event that the device session does not allow in its current state (HTTP 409).

    The session passed to :func:`protocol.step` is immutable, so the caller still holds the
    unchanged state after catching this.
    """

    status_hint = 409
    default_message = "event not allowed in this session state"

    state: SessionState
    event_type: type[object]

    def __init__(
        self, message: str | None = None, *, state: SessionState, event_type: type[object]
    ) -> None:
        if message is None:
            message = f"{event_type.__name__} is not allowed in state {state.name}"
        super().__init__(message)
        self.state = state
        self.event_type = event_type


class MalformedReply(ProtocolError):
    """Client side: a server reply that is not valid EDIP (treated like a bad gateway)."""

    status_hint = 502
    edip_status = Status.ERROR.value
    default_message = "malformed reply"
