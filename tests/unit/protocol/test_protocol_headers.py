"""Identity headers: every info form the SDKs send, device id rules, platform, retry_wait."""

from __future__ import annotations

import pytest

import protocol
from protocol import DeviceIdentity, Platform


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, {}),
        ("", {}),
        ("   ", {}),
        ("{}", {}),  # iOS user info on /task and /result
        (
            "device_id=NVFlare_Android-1&app_name=ExecuTorch Demo&app_version=1.0&platform=android",
            {
                "device_id": "NVFlare_Android-1",
                "app_name": "ExecuTorch Demo",
                "app_version": "1.0",
                "platform": "android",
            },
        ),
        (  # the Python simulator: percent-encoded, literal None
            "app_name=flare_mobile&app_version=1.0&platform=None&platform_version=None",
            {
                "app_name": "flare_mobile",
                "app_version": "1.0",
                "platform": "None",
                "platform_version": "None",
            },
        ),
        (
            "user_id=demo_id&user_name=demo+user%21",
            {"user_id": "demo_id", "user_name": "demo user!"},
        ),
        (
            '{"app_version":"1.0","device_id":"E621","platform":"ios"}',
            {"app_version": "1.0", "device_id": "E621", "platform": "ios"},
        ),
        (
            '{"n": 1, "f": 1.5, "b": true, "z": null, "o": {"a": [1]}}',
            {"n": "1", "f": "1.5", "b": "true", "o": '{"a":[1]}'},
        ),
        ('  {"a":"b"}  ', {"a": "b"}),
        ("{a=1", {"{a": "1"}),  # not JSON: falls through to the query-string parser
        ("[1,2]", {}),
        ("novalue&k=v", {"k": "v"}),
        ("=orphan&k=v", {"k": "v"}),
        ("k=first&k=second", {"k": "first"}),
        ("k=a=b", {"k": "a=b"}),
        ("k=100%&j=%zz", {"k": "100%", "j": "%zz"}),
        ("k=%ff", {"k": "\ufffd"}),
    ],
)
def test_parse_info_forms(text: str | None, expected: dict[str, str]) -> None:
    assert protocol.parse_info(text) == expected


def test_identity_header_names_are_case_insensitive() -> None:
    identity = protocol.parse_identity(
        {
            "x-flare-device-id": " dev-1 ",
            "X-FLARE-DEVICE-INFO": "platform=ios",
            "x-flare-user-info": "user_id=u",
        }
    )
    assert identity == DeviceIdentity(
        device_id="dev-1",
        device_info={"platform": "ios"},
        user_info={"user_id": "u"},
        header_platform=Platform.IOS,
    )


@pytest.mark.parametrize("device_id", ["", "   "])
def test_blank_device_id_is_missing(device_id: str) -> None:
    with pytest.raises(protocol.MissingDeviceId, match="Device ID missing"):
        protocol.parse_identity({"X-Flare-Device-ID": device_id})


@pytest.mark.parametrize("device_id", ["x" * 129, "dév", "a\tb", "a\x00b", "a\x7fb"])
def test_invalid_device_id(device_id: str) -> None:
    with pytest.raises(protocol.MalformedRequest, match="X-Flare-Device-ID") as info:
        protocol.parse_identity({"X-Flare-Device-ID": device_id})
    assert info.value.status_hint == 400
    assert not isinstance(info.value, protocol.MissingDeviceId)


@pytest.mark.parametrize("device_id", ["x" * 128, "unknown", "uuid?3", "uuid#0", "a b"])
def test_valid_device_ids(device_id: str) -> None:
    assert protocol.parse_identity({"X-Flare-Device-ID": device_id}).device_id == device_id


@pytest.mark.parametrize(
    "info",
    [
        "device_id=dev-2&platform=ios",
        '{"device_id":"dev-2","platform":"ios"}',
        "device_id=dev-1x",
    ],
)
def test_device_id_mismatch(info: str) -> None:
    with pytest.raises(protocol.DeviceIdMismatch) as exc:
        protocol.parse_identity({"X-Flare-Device-ID": "dev-1", "X-Flare-Device-Info": info})
    assert exc.value.message == (
        "Device ID mismatch: X-Flare-Device-ID does not match X-Flare-Device-Info"
    )


@pytest.mark.parametrize(
    "info", ["device_id=dev-1", '{"device_id":"dev-1"}', "device_id=", "app_name=x"]
)
def test_matching_or_absent_info_device_id(info: str) -> None:
    identity = protocol.parse_identity({"X-Flare-Device-ID": "dev-1", "X-Flare-Device-Info": info})
    assert identity.device_id == "dev-1"


def test_user_info_device_id_is_not_checked() -> None:
    identity = protocol.parse_identity(
        {"X-Flare-Device-ID": "dev-1", "X-Flare-User-Info": "device_id=other"}
    )
    assert identity.user_info == {"device_id": "other"}


@pytest.mark.parametrize(
    ("device_id", "info", "expected"),
    [
        ("d", "platform=android", Platform.ANDROID),
        ("d", "platform=Android", Platform.ANDROID),
        ("d", '{"platform":"ios"}', Platform.IOS),
        ("d", "platform=iOS", Platform.IOS),
        ("NVFlare_Android-8f14e45fceea167a", None, Platform.ANDROID),
        ("NVFlare_Android-8f14e45fceea167a", "platform=ios", Platform.IOS),  # info wins
        ("d", "platform=None", None),
        ("d", "platform=linux", None),
        ("d", None, None),
    ],
)
def test_header_platform(device_id: str, info: str | None, expected: Platform | None) -> None:
    headers = {"X-Flare-Device-ID": device_id}
    if info is not None:
        headers["X-Flare-Device-Info"] = info
    assert protocol.parse_identity(headers).header_platform is expected


@pytest.mark.parametrize(
    ("header", "remembered", "expected"),
    [
        (Platform.IOS, Platform.ANDROID, Platform.IOS),
        (None, Platform.ANDROID, Platform.ANDROID),
        (None, Platform.IOS, Platform.IOS),
        (None, None, Platform.GENERIC),
    ],
)
def test_resolve_platform(
    header: Platform | None, remembered: Platform | None, expected: Platform
) -> None:
    identity = DeviceIdentity(device_id="d", header_platform=header)
    assert protocol.resolve_platform(identity, remembered) is expected


@pytest.mark.parametrize(
    ("platform", "seconds", "expected"),
    [
        (Platform.ANDROID, 5, 5000),
        (Platform.IOS, 5, 5),
        (Platform.GENERIC, 5, 5),
        (Platform.ANDROID, 0.25, 250),
        (Platform.IOS, 0.25, 1),
        (Platform.GENERIC, 0, 1),
        (Platform.ANDROID, 0, 0),
        (Platform.IOS, 30.4, 30),
        (Platform.ANDROID, 1e12, 2**31 - 1),
        (Platform.IOS, 1e12, 2**31 - 1),
    ],
)
def test_retry_wait_units(platform: Platform, seconds: float, expected: int) -> None:
    value = protocol.retry_wait(platform, seconds)
    assert type(value) is int
    assert value == expected


@pytest.mark.parametrize("seconds", [-1, float("nan"), float("inf")])
def test_retry_wait_rejects_bad_durations(seconds: float) -> None:
    with pytest.raises(ValueError, match="seconds"):
        protocol.retry_wait(Platform.IOS, seconds)


def test_retry_wait_rejects_non_numbers() -> None:
    with pytest.raises(TypeError, match="seconds"):
        protocol.retry_wait(Platform.IOS, True)
