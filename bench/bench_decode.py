"""Decode one 62,006-parameter update (the CIFAR-10 example net) in every wire form, side by side.

Run: ``python bench/bench_decode.py [--repeat N] [--wall]``. Prints the best and median time per
decode in milliseconds (process CPU time unless ``--wall``). "full decode" is what the server does
per ``/result``: ``decode_result_report`` (body parse, envelope checks) plus ``decode_tensor_map``
(schema checks, float32 arrays). The stdlib rows are the baseline DESIGN.md compares against:
``json.loads`` followed by ``np.array(list, float32)`` per tensor, with no validation at all. The
"list → f32" rows compare ways to convert the already-parsed lists (the step after the parse).
"""

from __future__ import annotations

import argparse
import array
import json
import statistics
import time
from typing import TYPE_CHECKING, Any

import cbor2
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
CBOR_TYPE = protocol.CBOR_CONTENT_TYPE


def _time(fn: Callable[[], object], repeat: int, clock: Callable[[], float]) -> tuple[float, float]:
    fn()  # warm up
    samples = []
    for _ in range(repeat):
        start = clock()
        fn()
        samples.append(clock() - start)
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
    parser.add_argument(
        "--wall",
        action="store_true",
        help="time with the wall clock instead of this process's CPU time (the default, which "
        "other processes on a busy machine disturb less)",
    )
    args = parser.parse_args()
    repeat: int = args.repeat
    clock = time.perf_counter if args.wall else time.process_time

    rng = np.random.default_rng(0)
    weights = {
        name: (rng.standard_normal(shape) * 1e-3).astype(np.float32)
        for name, shape in SCHEMA.items()
    }
    count = sum(w.size for w in weights.values())
    bodies = {form: _body(form, weights) for form in ("android", "ios", "python", "cbor")}
    # The body DESIGN.md measured: every float32 value as its exact double (17 digits), written
    # by json.dumps with its default ", " separators (~1.46 MB). Our encoder and Gson write the
    # short float32 spelling instead (~0.86 MB).
    long_android = json.loads(bodies["android"])
    for name, tensor in long_android["result"]["data"].items():
        tensor["data"] = weights[name.removeprefix("net.")].reshape(-1).tolist()
    bodies["android-17"] = json.dumps(long_android).encode()
    json_type = "application/json; charset=utf-8"

    def full(form: str) -> Callable[[], object]:
        body = bodies[form]
        content_type = CBOR_TYPE if form == "cbor" else json_type

        def run() -> object:
            report = protocol.decode_result_report(QUERY, body, content_type)
            return protocol.decode_tensor_map(report.result.data, SCHEMA)

        return run

    def stdlib(form: str) -> Callable[[], object]:
        body = bodies[form]

        def run() -> object:
            obj = json.loads(body)
            return {
                name: np.array(t["data"], dtype=np.float32).reshape(t["sizes"])
                for name, t in obj["result"]["data"].items()
            }

        return run

    def stdlib_python() -> object:
        obj = json.loads(bodies["python"])
        return {
            name: np.array(t["data"], dtype=np.float32) for name, t in obj["result"]["data"].items()
        }

    android = bodies["android"]
    lists: list[list[Any]] = [t["data"] for t in orjson.loads(android)["result"]["data"].values()]

    long_body = bodies["android-17"]
    rows: list[tuple[str, Callable[[], object]]] = [
        ("full decode, Android JSON 17-digit", full("android-17")),
        ("stdlib json + np.array, same body", stdlib("android-17")),
        ("  orjson.loads only, same body", lambda: orjson.loads(long_body)),
        ("  json.loads only, same body", lambda: json.loads(long_body)),
        ("full decode, Android JSON short", full("android")),
        ("stdlib json + np.array, same body ", stdlib("android")),
        ("full decode, iOS JSON short", full("ios")),
        ("full decode, Python nested JSON short", full("python")),
        ("stdlib json + np.array, same body  ", stdlib("python")),
        ("full decode, CBOR typed arrays", full("cbor")),
        ("  cbor2.loads only, same body", lambda: cbor2.loads(bodies["cbor"])),
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
    clock_name = "wall clock" if args.wall else "process CPU time"
    print(f"JSON rows sent as {json_type!r}; {clock_name}, best / median of {repeat} runs, ms")
    print(f"{'':<42} {'best':>8} {'median':>8}")
    results = {}
    for label, fn in rows:
        best, median = _time(fn, repeat, clock)
        results[label] = best
        print(f"{label:<42} {best:8.3f} {median:8.3f}")
    for body_label, full_label, stdlib_label in (
        ("17-digit", "full decode, Android JSON 17-digit", "stdlib json + np.array, same body"),
        ("short", "full decode, Android JSON short", "stdlib json + np.array, same body "),
    ):
        ratio = results[stdlib_label] / results[full_label]
        print(f"Android JSON ({body_label}): full decode is {ratio:.1f}x faster than stdlib")
    per_s = 1e3 / results["full decode, CBOR typed arrays"]
    print(f"CBOR: {per_s:,.0f} decodes/s on one core")


if __name__ == "__main__":
    main()
