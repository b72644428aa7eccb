"""Benchmark: where a gated job export spends its time, and what it does to a trio event loop.

1. Stages of one export of the ~270k-parameter CIFAR-10 CNN (bench_patch.py's model): capture,
   joint graph, lowering, template location, the gate, and ``model.pt2``.
2. The same export in a worker thread (``trio.to_thread.run_sync``) while the trio thread ticks
   every 5 ms: how late the ticks get (the export holds the GIL; STYLE.md F says to move export to
   a process if poll latency degrades).

Run: ``python bench/bench_export.py``. Prints one JSON object.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import trio

sys.path.insert(0, str(Path(__file__).parent))

from bench_patch import Cifar270k

from edgefl import DeviceModel
from edgefl import _export as ex


def stages(
    model: DeviceModel, input_shape: tuple[int, ...], output_shape: tuple[int, ...]
) -> dict[str, float]:
    times: dict[str, float] = {}

    def lap(name: str, t: float) -> float:
        now = time.perf_counter()
        times[name] = round(now - t, 3)
        return now

    t = time.perf_counter()
    ex.check_model(model, input_shape, output_shape)
    t = lap("check_model", t)
    distinct = ex._distinct_copy(ex._cpu_copy(model))
    with ex.EXPORT_LOCK, ex._quiet():
        ep = ex._capture(distinct, input_shape, output_shape)
        t = lap("capture", t)
        joint = ex._joint(ep)
        t = lap("joint_graph", t)
        program = ex._lower(joint)
        t = lap("lower_to_executorch", t)
    located = ex.ProgramTemplate.from_program(program)
    template = ex.ProgramTemplate(program=located.patch(ex._weights_of(model)), slots=located.slots)
    t = lap("locate_and_patch", t)
    ex.verify_program(model, template.program, input_shape, output_shape)
    t = lap("gate", t)
    ex.export_inference_program(model, input_shape, output_shape)
    lap("model_pt2", t)
    times["total"] = round(sum(times.values()), 3)
    return times


async def loop_lateness(
    model: DeviceModel, input_shape: tuple[int, ...], output_shape: tuple[int, ...]
) -> dict[str, float]:
    lateness: list[float] = []
    done = trio.Event()

    async def ticker() -> None:
        while not done.is_set():
            start = trio.current_time()
            await trio.sleep(0.005)
            lateness.append((trio.current_time() - start - 0.005) * 1000)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await trio.sleep(0.2)
        idle = list(lateness)
        lateness.clear()
        started = time.perf_counter()
        await trio.to_thread.run_sync(
            ex.export_job_artifacts,
            model,
            input_shape,
            output_shape,
            limiter=trio.CapacityLimiter(1),
        )
        seconds = time.perf_counter() - started
        done.set()
    busy = sorted(lateness)
    return {
        "export_in_thread_s": round(seconds, 3),
        "tick_lateness_idle_ms_median": round(statistics.median(idle), 3),
        "tick_lateness_during_export_ms_median": round(statistics.median(busy), 3),
        "tick_lateness_during_export_ms_p99": round(busy[int(0.99 * (len(busy) - 1))], 3),
        "tick_lateness_during_export_ms_max": round(busy[-1], 3),
        "ticks_during_export": len(busy),
    }


def main() -> None:
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    model = DeviceModel(Cifar270k())
    shapes = ((32, 3, 32, 32), (32,))
    stages(model, *shapes)  # warm up (first export pays for imports and caches)
    result = {"stages_s": stages(model, *shapes)}
    result.update(trio.run(loop_lateness, model, *shapes))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
