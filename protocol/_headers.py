"""Identity headers (EDIP §2): device id, device/user info in every form the SDKs send, platform.

``X-Flare-Device-Info`` and ``X-Flare-User-Info`` arrive as raw (not percent-encoded) query
strings from Android and from iOS on ``/job``, as JSON object text from iOS on ``/task`` and
``/result`` (``{}`` or ``""`` for user info), and as percent-encoded query strings from NVFlare's
Python simulator. :func:`parse_info` accepts all of them and never fails.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING
from urllib.parse import unquote_plus

import attrs
import orjson
from attrs import validators as v

from ._errors import DeviceIdMismatch, MalformedRequest, MissingDeviceId
from ._messages import Platform

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "DEVICE_ID_HEADER",
    "DEVICE_INFO_HEADER",
    "USER_INFO_HEADER",
    "DeviceIdentity",
    "parse_identity",
    "parse_info",
    "resolve_platform",
    "retry_wait",
]

DEVICE_ID_HEADER = "X-Flare-Device-ID"
DEVICE_INFO_HEADER = "X-Flare-Device-Info"
USER_INFO_HEADER = "X-Flare-User-Info"

_ANDROID_ID_PREFIX = "NVFlare_Android-"
_INT32_MAX = 2**31 - 1
_DEVICE_ID_RE = re.compile(r"[\x20-\x7e]{1,128}")
_WANTED = {
    DEVICE_ID_HEADER.lower(): DEVICE_ID_HEADER,
    DEVICE_INFO_HEADER.lower(): DEVICE_INFO_HEADER,
    USER_INFO_HEADER.lower(): USER_INFO_HEADER,
}


def _str_dict(_inst: object, attribute: attrs.Attribute[object], value: object) -> None:
    if not isinstance(value, dict) or not all(
        type(key) is str and type(item) is str for key, item in value.items()
    ):
        raise TypeError(f"{attribute.name} must be a dict of str to str")


@attrs.frozen(kw_only=True)
class DeviceIdentity:
    """Who sent a request, from its headers only (the body never overrides this, EDIP §2.4).

    ``header_platform`` is what this request alone reveals (device-info ``platform`` or the Android
    id prefix); combine it with what the server remembers using :func:`resolve_platform`.
    """

    device_id: str = attrs.field(validator=v.instance_of(str))
    device_info: dict[str, str] = attrs.field(factory=dict, validator=_str_dict)
    user_info: dict[str, str] = attrs.field(factory=dict, validator=_str_dict)
    header_platform: Platform | None = attrs.field(
        default=None, validator=v.optional(v.instance_of(Platform))
    )


def _stringify(value: object) -> str | None:
    """A JSON value as header text: strings as is, scalars in JSON spelling, containers as JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # e.g. an integer beyond 64 bits cannot come out of orjson.loads anyway
        return str(value)


def parse_info(text: str | None) -> dict[str, str]:
    """Parse ``X-Flare-Device-Info`` / ``X-Flare-User-Info`` (EDIP §2.2 algorithm). Never raises.

    1. Strip whitespace; empty → ``{}``.
    2. Text starting with ``{`` that parses as a JSON object is used as is (non-string scalars
       stringified in JSON spelling, ``null`` dropped, nested values kept as JSON text).
    3. Otherwise a query string: split on ``&``, each part on its first ``=``; parts without ``=``
       and empty keys are dropped; percent-decoding and ``+`` → space tolerate raw spaces, stray
       ``%`` and bad UTF-8; the first occurrence of a key wins.
    """
    if text is None:
        return {}
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            info: dict[str, str] = {}
            for key, value in parsed.items():
                as_text = _stringify(value)
                if as_text is not None:
                    info[key] = as_text
            return info
    info = {}
    for part in text.split("&"):
        key, sep, value = part.partition("=")
        if not sep:
            continue
        key = unquote_plus(key, errors="replace")
        if key and key not in info:
            info[key] = unquote_plus(value, errors="replace")
    return info


def _platform_word(word: str | None) -> Platform | None:
    if word is None:
        return None
    word = word.strip().lower()
    if word == "android":
        return Platform.ANDROID
    if word == "ios":
        return Platform.IOS
    return None


def parse_identity(headers: Mapping[str, str]) -> DeviceIdentity:
    """Read the three identity headers (names matched case-insensitively).

    Raises:
        MissingDeviceId: ``X-Flare-Device-ID`` is absent or blank.
        MalformedRequest: the device id is not 1-128 printable ASCII characters.
        DeviceIdMismatch: device info carries a different ``device_id`` (EDIP §2.4).
    """
    found: dict[str, str] = {}
    for name, value in headers.items():
        canonical = _WANTED.get(name.lower()) if isinstance(name, str) else None
        if canonical is not None and canonical not in found and isinstance(value, str):
            found[canonical] = value
    device_id = found.get(DEVICE_ID_HEADER, "").strip()
    if not device_id:
        raise MissingDeviceId()
    if _DEVICE_ID_RE.fullmatch(device_id) is None:
        raise MalformedRequest(
            f"invalid {DEVICE_ID_HEADER}: must be 1-128 printable ASCII characters"
        )
    device_info = parse_info(found.get(DEVICE_INFO_HEADER))
    claimed = device_info.get("device_id")
    if claimed and claimed.strip() != device_id:
        raise DeviceIdMismatch()
    user_info = parse_info(found.get(USER_INFO_HEADER))
    platform = _platform_word(device_info.get("platform"))
    if platform is None and device_id.startswith(_ANDROID_ID_PREFIX):
        platform = Platform.ANDROID
    return DeviceIdentity(
        device_id=device_id,
        device_info=device_info,
        user_info=user_info,
        header_platform=platform,
    )


def resolve_platform(identity: DeviceIdentity, remembered: Platform | None) -> Platform:
    """EDIP §2.5: what the headers reveal, else what was remembered for the device, else generic."""
    if identity.header_platform is not None:
        return identity.header_platform
    if remembered is not None:
        return remembered
    return Platform.GENERIC


def retry_wait(platform: Platform, seconds: float) -> int:
    """``retry_wait`` for a wait of ``seconds`` in the platform's unit (EDIP §3.4).

    Android reads milliseconds (``round(seconds * 1000)``); iOS and generic clients read seconds
    (``max(1, round(seconds))``). Jitter is the caller's business. The result is capped at
    ``2**31 - 1``, the largest value Android's ``Int`` holds.

    Raises:
        ValueError: ``seconds`` is negative or not finite.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"seconds must be a number, got {type(seconds).__name__}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"seconds must be a finite number >= 0, got {seconds}")
    # Clamped to a signed 32-bit value: Android reads the field into a Kotlin Int.
    match platform:
        case Platform.ANDROID:
            return min(_INT32_MAX, round(seconds * 1000))
        case Platform.IOS | Platform.GENERIC:
            return min(_INT32_MAX, max(1, round(seconds)))
    raise TypeError(f"platform must be a Platform, got {platform!r}")
