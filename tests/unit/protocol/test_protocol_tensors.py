"""Tensor maps: the three device forms and CBOR, and every inconsistency as an InvalidResult."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import orjson
import pytest

import protocol
from protocol import InvalidResult

SCHEMA = {"fc.weight": (3, 2), "fc.bias": (3,)}
WEIGHTS = {
    "fc.weight": np.array([[0.5, -1.25], [0.0, 3.0], [1e-4, -2.5e-5]], dtype=np.float32),
    "fc.bias": np.array([0.1, 0.2, 0.3], dtype=np.float32),
}


def tensor(**fields: object) -> dict[str, object]:
    return dict(fields)


def android(shape: list[int], data: object) -> dict[str, object]:
    return {"shape": shape, "sizes": shape, "data": data}


def valid_data() -> dict[str, Any]:
    return {
        "net.fc.weight": android([3, 2], [0.5, -1.25, 0.0, 3.0, 1e-4, -2.5e-5]),
        "net.fc.bias": android([3], [0.1, 0.2, 0.3]),
    }


def decode(data: dict[str, Any], schema: dict[str, tuple[int, ...]] = SCHEMA) -> dict[str, Any]:
    return protocol.decode_tensor_map(data, schema)


def assert_invalid(data: dict[str, Any], words: str, *, tensor: str | None = None) -> None:
    with pytest.raises(InvalidResult, match=re.escape(words)) as info:
        decode(data)
    assert info.value.status_hint == 200
    assert info.value.edip_status == "ERROR"
    if tensor is not None:
        assert info.value.tensor == tensor
        assert repr(tensor) in info.value.message


# ---------------------------------------------------------------------------------------------
# the forms


@pytest.mark.parametrize("form", ["android", "ios", "python", "cbor"])
@pytest.mark.parametrize("cbor", [False, True])
def test_every_form_round_trips_through_both_codecs(form: protocol.TensorForm, cbor: bool) -> None:
    report = protocol.ResultReport(
        job_id="J",
        task_id="T",
        task_name="train",
        result=protocol.RawResult(data=protocol.encode_tensor_map(WEIGHTS, form)),
    )
    body = protocol.encode_request(report, cbor=cbor)
    decoded = protocol.decode_result_report(
        protocol.request_query(report), body, protocol.media_type(cbor=cbor)
    )
    arrays = decode(dict(decoded.result.data))
    assert arrays.keys() == SCHEMA.keys()
    for name, expected in WEIGHTS.items():
        got = arrays[name]
        assert got.dtype == np.float32
        assert got.flags.c_contiguous
        assert not got.flags.writeable
        np.testing.assert_array_equal(got, expected)


def test_encode_tensor_map_shapes_of_each_form() -> None:
    android_form = protocol.encode_tensor_map(WEIGHTS, "android")
    assert android_form["net.fc.weight"] == {
        "shape": [3, 2],
        "sizes": [3, 2],
        "data": [0.5, -1.25, 0.0, 3.0, 0.0001, -2.5e-05],
    }
    ios_form = protocol.encode_tensor_map(WEIGHTS, "ios")
    assert ios_form["net.fc.weight"] == {
        "sizes": [3, 2],
        "strides": [2, 1],
        "data": [0.5, -1.25, 0.0, 3.0, 0.0001, -2.5e-05],
    }
    python_form = protocol.encode_tensor_map(WEIGHTS, "python")
    assert python_form["net.fc.weight"] == {
        "sizes": [3, 2],
        "data": [[0.5, -1.25], [0.0, 3.0], [0.0001, -2.5e-05]],
    }
    cbor_form = protocol.encode_tensor_map(WEIGHTS, "cbor")
    entry = cbor_form["net.fc.weight"]
    assert isinstance(entry, dict)
    assert entry["sizes"] == [3, 2]
    assert entry["data"].dtype == np.float32
    assert entry["data"].shape == (6,)


def test_json_forms_use_the_short_float32_spelling() -> None:
    values = {"w": np.array([0.0012, -4.2e-4], dtype=np.float32)}
    text = orjson.dumps(protocol.encode_tensor_map(values, "android"))
    assert b"[0.0012,-0.00042]" in text


def test_encode_tensor_map_prefix_and_errors() -> None:
    out = protocol.encode_tensor_map({"net.a": np.zeros(1), "b": np.zeros(1)}, "ios")
    assert set(out) == {"net.a", "net.b"}
    with pytest.raises(ValueError, match="form must be one of"):
        protocol.encode_tensor_map(WEIGHTS, "json")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN or infinity"):
        protocol.encode_tensor_map({"w": np.array([np.nan])}, "android")
    with pytest.raises(ValueError, match="expected a float array"):
        protocol.encode_tensor_map({"w": np.array(["x"])}, "android")


def test_v4_android_literals() -> None:
    data = valid_data()
    data["net.fc.bias"] = android([3], [1.0e-4, 0, -4.2e-4])  # Gson exponents, iOS integer zero
    arrays = decode(data)
    np.testing.assert_array_equal(arrays["fc.bias"], np.array([1e-4, 0.0, -4.2e-4], np.float32))


def test_shape_only_and_sizes_only() -> None:
    data = valid_data()
    data["net.fc.bias"] = {"shape": [3], "data": [1, 2, 3]}
    data["net.fc.weight"] = {"sizes": [3, 2], "data": [1, 2, 3, 4, 5, 6]}
    arrays = decode(data)
    assert arrays["fc.weight"].shape == (3, 2)


def test_scalar_and_empty_tensors() -> None:
    schema: dict[str, tuple[int, ...]] = {"s": (), "t": (), "e": (0, 3)}
    arrays = protocol.decode_tensor_map(
        {
            "net.s": {"sizes": [], "data": [1.5]},
            "net.t": {"sizes": [], "data": 2.5},  # torch's tolist() of a 0-d tensor
            "net.e": {"sizes": [0, 3], "data": []},
        },
        schema,
    )
    assert arrays["s"].shape == ()
    assert float(arrays["s"]) == 1.5
    assert float(arrays["t"]) == 2.5
    assert arrays["e"].shape == (0, 3)


def test_net_prefix_is_stripped_once() -> None:
    arrays = protocol.decode_tensor_map(
        {"net.net.x": {"sizes": [1], "data": [1.0]}, "y": {"sizes": [1], "data": [2.0]}},
        {"net.x": (1,), "y": (1,)},
    )
    assert set(arrays) == {"net.x", "y"}


def test_cbor_views_are_returned_without_copy() -> None:
    buffer = np.array([1, 2, 3, 4, 5, 6], dtype=np.float32).tobytes()
    view = np.frombuffer(buffer, dtype=np.float32)
    data = valid_data()
    data["net.fc.weight"] = {"sizes": [3, 2], "data": view}
    arrays = decode(data)
    assert np.shares_memory(arrays["fc.weight"], view)


def test_non_native_ndarrays_are_converted() -> None:
    data = valid_data()
    data["net.fc.bias"] = {"sizes": [3], "data": np.array([1, 2, 3], dtype=">f4")}
    data["net.fc.weight"] = {"sizes": [3, 2], "data": np.arange(6, dtype=np.float64)}
    arrays = decode(data)
    assert arrays["fc.bias"].dtype == np.float32
    assert arrays["fc.bias"].dtype.isnative
    np.testing.assert_array_equal(arrays["fc.weight"], np.arange(6).reshape(3, 2))


# ---------------------------------------------------------------------------------------------
# names


def test_empty_map() -> None:
    assert_invalid({}, "result has no tensors")


def test_missing_and_unexpected_tensors_are_named() -> None:
    data = valid_data()
    del data["net.fc.bias"]
    data["net.extra"] = android([1], [0.0])
    assert_invalid(
        data,
        "tensor names do not match the model: missing tensors 'net.fc.bias'; "
        "unexpected tensors 'net.extra'",
        tensor="net.extra",
    )


def test_ios_error_report_is_an_invalid_result() -> None:
    assert_invalid({"error": "cannot load model"}, "unexpected tensors 'error'")


def test_long_name_lists_are_bounded() -> None:
    data = valid_data()
    for index in range(50):
        data[f"junk{index}" + "x" * 500] = 1
    with pytest.raises(InvalidResult, match="and 45 more") as info:
        decode(data)
    assert len(info.value.message) < 1000


def test_two_names_for_one_parameter() -> None:
    data = valid_data()
    data["fc.bias"] = android([3], [0.0, 0.0, 0.0])
    assert_invalid(data, "name the same parameter")


# ---------------------------------------------------------------------------------------------
# sizes, shape, strides


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        (android([4], [1, 2, 3, 4]), "sizes [4] does not match the model's shape [3]"),
        ({"shape": [4], "data": [1, 2, 3, 4]}, "shape [4] does not match the model's shape [3]"),
        ({"sizes": [-3], "data": [1, 2, 3]}, "sizes [-3] does not match"),
        ({"sizes": [3, 1], "data": [1, 2, 3]}, "sizes [3, 1] does not match"),
        ({"sizes": [10**12], "data": [1, 2, 3]}, "does not match"),  # nothing allocated from it
        ({"sizes": [1] * 10000, "data": [1, 2, 3]}, "a list of 10000 sizes does not match"),
        ({"sizes": [3], "shape": [1, 3], "data": [1, 2, 3]}, "shape [1, 3] does not match"),
        ({"sizes": [3.0], "data": [1, 2, 3]}, "sizes must be a list of integers"),
        ({"sizes": [True, True, True], "data": [1, 2, 3]}, "sizes must be a list of integers"),
        ({"sizes": "3", "data": [1, 2, 3]}, "sizes must be a list of integers"),
        ({"sizes": None, "data": [1, 2, 3]}, "sizes must be a list of integers"),
        ({"data": [1, 2, 3]}, "missing sizes"),
        ({"sizes": [3]}, "missing data"),
        ({"sizes": [3], "strides": [2], "data": [1, 2, 3]}, "strides must be the row-major"),
        ({"sizes": [3], "strides": "1", "data": [1, 2, 3]}, "strides must be the row-major"),
    ],
)
def test_dimension_errors(entry: dict[str, object], words: str) -> None:
    data = valid_data()
    data["net.fc.bias"] = entry
    assert_invalid(data, words, tensor="net.fc.bias")


def test_transposed_strides_are_refused() -> None:
    data = valid_data()
    data["net.fc.weight"] = {"sizes": [3, 2], "strides": [1, 3], "data": [0.0] * 6}
    assert_invalid(data, "strides must be the row-major strides [2, 1]", tensor="net.fc.weight")


# ---------------------------------------------------------------------------------------------
# data


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ([1, 2], "2 values, expected 3"),
        ([1, 2, 3, 4], "4 values, expected 3"),
        ([1, "2", 3], "data must contain only numbers"),
        ([1, None, 3], "data must contain only numbers"),
        ([1, [2], 3], "data must contain only numbers"),
        ([1, {}, 3], "data must contain only numbers"),
        ([True, 0.5, 0.5], "not booleans"),
        ([0.0, False, 0.0], "not booleans"),
        ([1, 2, 10**400], "data must contain only numbers"),
        ([1, 2, 10**40], "NaN or infinity (as float32)"),
        ([1, 2, 1e39], "NaN or infinity (as float32)"),
        ([1, 2, float("nan")], "NaN or infinity"),
        ([1, 2, float("-inf")], "NaN or infinity"),
        ("1,2,3", "data must be a list of numbers"),
        (3.0, "data must be a list of numbers"),
        (np.array([1, 2, 3], dtype=np.int32), "1-D float typed array"),
        (np.zeros((3, 1), dtype=np.float32), "1-D float typed array"),
        (np.zeros(4, dtype=np.float32), "4 values, expected 3"),
        (np.array([1, 2, np.nan], dtype=np.float32), "NaN or infinity"),
        (np.array([1, 2, 1e300], dtype=np.float64), "NaN or infinity (as float32)"),
    ],
)
def test_data_errors(values: object, words: str) -> None:
    data = valid_data()
    data["net.fc.bias"] = {"sizes": [3], "data": values}
    assert_invalid(data, words, tensor="net.fc.bias")


def test_all_zero_tensor_with_one_boolean() -> None:
    data = valid_data()
    data["net.fc.weight"] = {"sizes": [3, 2], "data": [0.0, 0, 0.0, False, 0.0, 0.0]}
    assert_invalid(data, "not booleans", tensor="net.fc.weight")


def test_all_zero_tensor_is_fine() -> None:
    data = valid_data()
    data["net.fc.weight"] = {"sizes": [3, 2], "data": [0.0, 0, -0.0, 1, 1.0, 0.0]}
    np.testing.assert_array_equal(decode(data)["fc.weight"], [[0, 0], [0, 1], [1, 0]])


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ([[1, 2], [3, 4], [5]], "ragged or malformed nesting at depth 1"),
        ([[1, 2], [3, 4]], "2 rows at depth 0, expected 3"),
        ([[1, 2], [3, 4], [5, 6], [7, 8]], "4 rows at depth 0, expected 3"),
        ([[1, 2], [3, 4], 5], "ragged or malformed nesting at depth 1"),
        ([[1, 2], [3, 4], [5, [6]]], "data must contain only numbers"),
        ([[1, 2], [3, 4], [5, True]], "not booleans"),
        ([[1, 2], [3, 4], (5, 6)], "ragged or malformed nesting"),
    ],
)
def test_nested_errors(values: object, words: str) -> None:
    data = valid_data()
    data["net.fc.weight"] = {"sizes": [3, 2], "data": values}
    assert_invalid(data, words, tensor="net.fc.weight")


def test_three_level_nesting() -> None:
    expected = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    arrays = protocol.decode_tensor_map(
        {"net.k": {"sizes": [2, 3, 4], "data": expected.tolist()}}, {"k": (2, 3, 4)}
    )
    np.testing.assert_array_equal(arrays["k"], expected)
    bad = expected.tolist()
    bad[1][2] = [1.0, 2.0]
    with pytest.raises(InvalidResult, match="depth 2"):
        protocol.decode_tensor_map({"net.k": {"sizes": [2, 3, 4], "data": bad}}, {"k": (2, 3, 4)})


@pytest.mark.parametrize("entry", [None, [1, 2, 3], "x", 5])
def test_tensor_must_be_an_object(entry: object) -> None:
    data = valid_data()
    data["net.fc.bias"] = entry
    assert_invalid(data, "must be an object with sizes and data", tensor="net.fc.bias")
