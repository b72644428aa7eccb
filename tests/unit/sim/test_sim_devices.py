"""Simulated devices send what each SDK sends (EDIP §2, §3.4, §6.2, §10.3)."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest

from edgefl._simulate import (
    DEVICE_KINDS,
    FleetConfig,
    _assign_kinds,
    _device_id,
    device_headers,
    fleet_config_from_spec,
    parse_platform_mix,
    result_meta,
    retry_seconds,
    training_params,
)
from protocol import (
    Cookie,
    Platform,
    RawResult,
    ResultReport,
    decode_result_report,
    decode_tensor_map,
    encode_request,
    encode_tensor_map,
    parse_identity,
    request_query,
    resolve_platform,
)

ANDROID = "NVFlare_Android-8f14e45fceea167a"
IOS = "E621E1F8-C36C-495A-93FC-0C247A3E6E5F"


def test_android_headers_are_the_sdk_query_string_with_raw_spaces() -> None:
    headers = device_headers("android", ANDROID, "task")
    assert headers["X-Flare-Device-Info"] == (
        f"device_id={ANDROID}&app_name=ExecuTorch Demo&app_version=1.0&platform=android"
    )
    assert headers["X-Flare-User-Info"] == "user_id=8f14e45fceea167a"
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    identity = parse_identity(headers)
    assert identity.device_id == ANDROID
    assert identity.device_info["app_name"] == "ExecuTorch Demo"
    assert resolve_platform(identity, None) is Platform.ANDROID


def test_ios_headers_switch_from_query_string_to_json_after_job() -> None:
    job = device_headers("ios", IOS, "job")
    assert job["X-Flare-Device-Info"] == f"device_id={IOS}&platform=ios&app_version=1.0"
    assert job["X-Flare-User-Info"] == ""
    for endpoint in ("task", "result"):
        headers = device_headers("ios", IOS, endpoint)
        assert json.loads(headers["X-Flare-Device-Info"]) == {
            "device_id": IOS,
            "platform": "ios",
            "app_version": "1.0",
        }
        assert headers["X-Flare-User-Info"] == "{}"
        assert resolve_platform(parse_identity(headers), None) is Platform.IOS
    assert resolve_platform(parse_identity(job), None) is Platform.IOS


@pytest.mark.parametrize("kind", ["python", "cbor"])
def test_other_clients_are_generic(kind: str) -> None:
    headers = device_headers(kind, "dev#1", "task")  # type: ignore[arg-type]
    assert resolve_platform(parse_identity(headers), None) is Platform.GENERIC
    if kind == "cbor":
        assert headers["Content-Type"] == headers["Accept"] == "application/cbor"
    else:
        assert "platform=None" in headers["X-Flare-Device-Info"]


def test_retry_wait_is_read_in_the_platform_unit() -> None:
    assert retry_seconds("android", 250) == pytest.approx(0.25)
    assert retry_seconds("android", None) == pytest.approx(5.0)
    for kind in ("ios", "python", "cbor"):
        assert retry_seconds(kind, 2) == pytest.approx(2.0)  # type: ignore[arg-type]
        assert retry_seconds(kind, None) == pytest.approx(5.0)  # type: ignore[arg-type]


def test_training_parameters_come_from_task_meta_then_job_config() -> None:
    config = {"epoch": 3, "lr": 0.001, "batch_size": 4}
    assert training_params({}, config) == (3, 0.001, 4)
    meta = {"total_epochs": 2, "learning_rate": 0.5, "batch_size": 8, "model_version": 3}
    assert training_params(meta, config) == (2, 0.5, 8)
    # iOS never gets learning_rate in the meta (EDIP §10.3): the job config supplies it
    assert training_params({"total_epochs": 2, "batch_size": 8}, config) == (2, 0.001, 8)
    assert training_params({}, {}) == (1, 0.01, 1)
    assert training_params({"learning_rate": True}, {}) == (1, 0.01, 1)


def test_result_meta_per_platform() -> None:
    task = {"model_version": 2, "method": "xor", "model_buffer_type": "executorch"}
    config = {"lr": 0.1, "epoch": 1}
    android = result_meta("android", task, config, epochs=3, lr=0.1, batch_size=4)
    assert android == {"learning_rate": 0.1, "batch_size": 4, "method": "xor", "epochs": 3}
    ios = result_meta("ios", task, config, epochs=3, lr=0.1, batch_size=4)
    assert ios["training_completed"] is True
    assert ios["config_args"] == ["epoch", "lr"]
    assert ios["architecture"] == "executorch_native"
    assert result_meta("python", task, config, epochs=3, lr=0.1, batch_size=4) == task
    assert result_meta("cbor", task, config, epochs=3, lr=0.1, batch_size=4) == {}


@pytest.mark.parametrize("kind", DEVICE_KINDS)
def test_each_kind_reports_tensors_the_server_decodes_exactly(kind: str) -> None:
    rng = np.random.default_rng(0)
    delta = {
        "fc.weight": rng.normal(size=(3, 4)).astype(np.float32),
        "fc.bias": rng.normal(size=3).astype(np.float32),
    }
    form = kind  # the device kinds are named after their tensor forms
    report = ResultReport(
        job_id="job-1",
        task_id="task-1",
        task_name="train",
        result=RawResult(kind="et_tensor_diff", data=encode_tensor_map(delta, form), meta={}),  # type: ignore[arg-type]
        cookie=Cookie(model_version=2, device_selection_id=5),
    )
    cbor = kind == "cbor"
    decoded = decode_result_report(
        request_query(report),
        encode_request(report, cbor=cbor),
        "application/cbor" if cbor else "application/json",
    )
    assert decoded.cookie == Cookie(model_version=2, device_selection_id=5)
    tensors = decode_tensor_map(decoded.result.data, {"fc.weight": (3, 4), "fc.bias": (3,)})
    for name, value in delta.items():
        assert np.array_equal(tensors[name], value), (kind, name)


def test_device_ids_look_like_the_sdks() -> None:
    rng = random.Random(1)
    assert re.fullmatch(r"NVFlare_Android-[0-9a-f]{16}", _device_id("android", 0, rng, "p"))
    ios = _device_id("ios", 1, rng, "p")
    assert re.fullmatch(r"[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}", ios)
    assert _device_id("python", 7, rng, "prefix") == "prefix#7"
    assert _device_id("cbor", 7, rng, "prefix") == "edgefl-sim-00007"


def test_platform_mix_assigns_kinds_in_proportion_and_reproducibly() -> None:
    mix = parse_platform_mix("android=2, ios=1,cbor=1")
    assert mix == pytest.approx({"android": 0.5, "ios": 0.25, "cbor": 0.25})
    kinds = _assign_kinds(mix, 10, random.Random(3))
    assert len(kinds) == 10
    assert {k: kinds.count(k) for k in set(kinds)} in (
        {"android": 5, "ios": 3, "cbor": 2},
        {"android": 5, "ios": 2, "cbor": 3},
    )
    assert kinds == _assign_kinds(mix, 10, random.Random(3))
    assert parse_platform_mix("python") == {"python": 1.0}
    assert parse_platform_mix("ios=0,android=1") == {"android": 1.0}
    with pytest.raises(ValueError, match="unknown device kind 'windows'"):
        parse_platform_mix("windows=1")
    with pytest.raises(ValueError, match="weight of ios"):
        parse_platform_mix("ios=many")
    with pytest.raises(ValueError, match="no device kind"):
        parse_platform_mix("ios=0")


def test_fleet_config_validates_by_field_name() -> None:
    assert FleetConfig().trainer == "executorch"
    with pytest.raises(ValueError, match="num_devices"):
        FleetConfig(num_devices=0)
    with pytest.raises(ValueError, match="dropout"):
        FleetConfig(dropout=1.5)
    with pytest.raises(ValueError, match="delay low"):
        FleetConfig(delay=(2.0, 1.0))
    with pytest.raises(ValueError, match="platform_mix"):
        FleetConfig(platform_mix={"blackberry": 1.0})
    with pytest.raises(ValueError, match="partition"):
        FleetConfig(partition="sharded")  # type: ignore[arg-type]


def test_fleet_config_from_job_settings_and_overrides() -> None:
    settings = {
        "num_devices": 7,
        "num_workers": 3,
        "trainer": "eager",
        "trainer_args": {},
        "dataset": "digits",
        "partition": "dirichlet",
        "dirichlet_alpha": 0.3,
        "seed": 9,
        "job_timeout": 60.0,
    }
    config = fleet_config_from_spec(settings, num_devices=None, trainer="executorch")
    assert config.num_devices == 7
    assert config.num_workers == 3
    assert config.trainer == "executorch"
    assert config.partition == "dirichlet"
    assert config.alpha == pytest.approx(0.3)
    assert config.seed == 9
    assert fleet_config_from_spec(None) == FleetConfig()
