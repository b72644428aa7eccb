"""Decode one 62,006-parameter update (the CIFAR-10 example net) in every wire form, side by side.

Run: ``python bench/bench_decode.py [--repeat N]``. Prints the best and median time per decode in
milliseconds. "full decode" is what the server does per ``/result``: ``decode_result_report`` (body
parse, envelope checks) plus ``decode_tensor_map`` (schema checks, float32 arrays). The stdlib rows
are the baseline DESIGN.md compares against: ``json.loads`` followed by ``np.array(list, float32)``
per tensor, with no validation at all. The "list → float32" rows compare ways to convert the
already-parsed lists (the step after the parse).
"""

from __future__ import annotations

import argparse
import array
import json
import statistics
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

import protocol

if TYPE_CHECKING:
    from collections.abc import Callable

# The CIFAR-10 example network of NVFlare's ExecuTorch demo: 62,006 trainable parameters.
SCHEMA: dict[str, tuple[int, ...]] = {
    "conv1.weight": (6, 3, 5, 5),
    "conv1.bias": (6,),
    "conv2.weight": (16, 6, 5, 5),
    "conv2.bias": (16,),
    "fc1.weight": (120, 400),
    "fc1.bias": (120,),
    "fc2.weight": (84, 120),
    "fc2.bias": (84,),
    "fc3.weight": (10, 84),
    "fc3.bias": (10,),
}
QUERY = {"job_id": "J", "task_id": "T", "task_name": "train"}


def _time(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    fn()  # warm up
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return min(samples) * 1e3, statistics.median(samples) * 1e3


def _body(form: protocol.TensorForm, weights: dict[str, np.ndarray]) -> bytes:
    report = protocol.ResultReport(
        job_id="J",
        task_id="T",
        task_name="train",
        result=protocol.RawResult(
            kind="number", data=protocol.encode_tensor_map(weights, form), meta={}
        ),
        cookie=protocol.Cookie(model_version=2, device_selection_id=2),
    )
    return protocol.encode_request(report, cbor=form == "cbor")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    repeat: int = args.repeat

    rng = np.random.default_rng(0)
    weights = {
        name: (rng.standard_normal(shape) * 1e-3).astype(np.float32)
        for name, shape in SCHEMA.items()
    }
    count = sum(w.size for w in weights.values())
    bodies = {form: _body(form, weights) for form in ("android", "ios", "python", "cbor")}
    json_type = "application/json; charset=utf-8"

    def full(form: protocol.TensorForm) -> Callable[[], object]:
        body = bodies[form]
        content_type = protocol.media_type(cbor=form == "cbor")

        def run() -> object:
            report = protocol.decode_result_report(QUERY, body, content_type)
            return protocol.decode_tensor_map(report.result.data, SCHEMA)

        return run

    def stdlib_android() -> object:
        obj = json.loads(bodies["android"])
        return {
            name: np.array(t["data"], dtype=np.float32).reshape(t["sizes"])
            for name, t in obj["result"]["data"].items()
        }

    def stdlib_python() -> object:
        obj = json.loads(bodies["python"])
        return {
            name: np.array(t["data"], dtype=np.float32) for name, t in obj["result"]["data"].items()
        }

    android = bodies["android"]
    lists: list[list[Any]] = [t["data"] for t in orjson.loads(android)["result"]["data"].values()]

    rows: list[tuple[str, Callable[[], object]]] = [
        ("full decode, Android JSON", full("android")),
        ("full decode, iOS JSON", full("ios")),
        ("full decode, Python nested JSON", full("python")),
        ("full decode, CBOR typed arrays", full("cbor")),
        ("  orjson.loads only (Android body)", lambda: orjson.loads(android)),
        ("  json.loads only (Android body)", lambda: json.loads(android)),
        ("stdlib json + np.array, Android", stdlib_android),
        ("stdlib json + np.array, Python nested", stdlib_python),
        ("  list → f32: array.array('f') (used)", lambda: [array.array("f", x) for x in lists]),
        ("  list → f32: np.array(dtype=f32)", lambda: [np.array(x, np.float32) for x in lists]),
        ("  list → f32: np.fromiter(f32)", lambda: [np.fromiter(x, np.float32) for x in lists]),
        (
            "  list → f32: np.array(f64).astype",
            lambda: [np.array(x, np.float64).astype(np.float32) for x in lists],
        ),
    ]
    print(f"{count:,} parameters; body sizes: ", end="")
    print(", ".join(f"{form} {len(body) / 1e6:.2f} MB" for form, body in bodies.items()))
    print(f"content type for JSON rows: {json_type!r}; best / median of {repeat} runs, ms")
    results = {}
    for label, fn in rows:
        best, median = _time(fn, repeat)
        results[label] = best
        print(f"{label:<42} {best:8.3f} {median:8.3f}")
    ratio = results["stdlib json + np.array, Android"] / results["full decode, Android JSON"]
    print(f"Android JSON: full decode is {ratio:.1f}x faster than stdlib json + np.array")
    per_s = 1e3 / results["full decode, CBOR typed arrays"]
    print(f"CBOR: {per_s:,.0f} decodes/s on one core")


if __name__ == "__main__":
    main()
