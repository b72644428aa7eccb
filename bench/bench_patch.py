"""Benchmark: a new model version's ``.pte`` by weight patching vs by a full export.

Target (DESIGN.md "Performance targets"): under 20 ms per patched program for a ~270k-parameter
CIFAR-10 CNN, at least 50x faster than a full export of the same model, measured side by side.

Run: ``python bench/bench_patch.py [--repeats 200]``. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import numpy as np
import torch
from torch import nn

from edgefl import DeviceModel
from edgefl._export import _export_unchecked, build_template, load_weights


class Cifar270k(nn.Module):
    """Two 3x3 convolutions with max-pooling and a wide linear layer: 265,822 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(64 * 8 * 8, 60)
        self.fc2 = nn.Linear(60, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200, help="patches to time")
    parser.add_argument("--exports", type=int, default=3, help="full exports to time")
    parser.add_argument("--batch", type=int, default=32, help="input_shape[0]")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    torch.manual_seed(0)
    model = DeviceModel(Cifar270k())
    input_shape, output_shape = (args.batch, 3, 32, 32), (args.batch,)
    params = sum(p.numel() for p in model.parameters())

    started = time.perf_counter()
    template, _weights = build_template(model, input_shape, output_shape)
    template_seconds = time.perf_counter() - started

    rng = np.random.default_rng(0)
    versions = [
        {n: rng.standard_normal(s).astype(np.float32) for n, s in template.param_shapes.items()}
        for _ in range(min(args.repeats, 20))
    ]
    template.patch(versions[0])  # warm up
    patch_ms = []
    for i in range(args.repeats):
        w = versions[i % len(versions)]
        t = time.perf_counter()
        template.patch(w)
        patch_ms.append((time.perf_counter() - t) * 1000)

    # Full exports of the same model holding a new version's weights (no gate: the export alone).
    export_s = []
    reference = None
    for i in range(args.exports):
        m = DeviceModel(Cifar270k())
        load_weights(m, versions[i])
        t = time.perf_counter()
        program, _ = _export_unchecked(m, input_shape, output_shape)
        export_s.append(time.perf_counter() - t)
        if i == 0:
            reference = program
    identical = reference == template.patch(versions[0])

    patch_median = statistics.median(patch_ms)
    export_median = statistics.median(export_s)
    print(
        json.dumps(
            {
                "model_parameters": params,
                "program_bytes": len(template.program),
                "patch_ms_median": round(patch_median, 3),
                "patch_ms_p99": round(sorted(patch_ms)[int(0.99 * (len(patch_ms) - 1))], 3),
                "patch_repeats": args.repeats,
                "full_export_s_median": round(export_median, 3),
                "full_export_s_all": [round(s, 3) for s in export_s],
                "template_build_s": round(template_seconds, 3),
                "speedup": round(export_median * 1000 / patch_median, 1),
                "patched_bytes_equal_full_export": identical,
                "target_patch_ms": 20.0,
                "target_speedup": 50.0,
                "meets_targets": patch_median < 20.0 and export_median * 1000 / patch_median >= 50,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
