"""``edgefl-server demo``: federated learning of handwritten digits by a simulated fleet of phones.

What it does, start to finish, on one machine:

1. builds the built-in job: a small MLP over scikit-learn's 8x8 handwritten digits (inputs flat
   ``[B, 64]``, so both Android's and iOS's input layouts fit), wrapped in a ``DeviceModel`` and
   exported with ``ETFedBuffRecipe`` (the gated ExecuTorch export) into ``<run>/job``;
2. starts the server in-process on ``127.0.0.1`` (a free port), serving that job with its state in
   ``<run>/state``;
3. runs simulated Android and iOS devices (and, on request, NVFlare's Python simulator form and our
   CBOR client) that speak EDIP over loopback HTTP, each training its own shard of the digits
   (never the held-out test split) with the ExecuTorch runtime on the ``.pte`` it received, or
   with eager PyTorch (``--trainer eager``);
4. shows progress (model version, updates accepted and discarded, latest accuracy), and ends with
   a table of test accuracy per model version, ``accuracy.png`` and ``metrics.jsonl`` in the run
   folder (default ``./runs/demo-<timestamp>``).

Ctrl-C ends the run cleanly and still writes what it has.

The defaults were chosen by measurement on a 2-core machine: 20 devices, FedBuff with 10 devices
training at a time and a new version every 5 updates, 30 versions, 2 local epochs at learning
rate 0.05 in batches of 16. Both trainers reach about 95 % test accuracy in well under a minute
after start-up (start-up itself, importing torch and ExecuTorch in the worker processes and
exporting, takes 10-20 s).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator, Mapping, Sequence

    from edgefl._recipe import ETFedBuffRecipe
    from edgefl._simulate import SimulationReport

__all__ = [
    "DEMO_JOB_NAME",
    "DemoResult",
    "add_arguments",
    "build_recipe",
    "run",
    "run_demo",
    "write_outputs",
]

DEMO_JOB_NAME = "digits_demo"

# Chosen by measurement (see the module docstring and the demo test).
DEFAULT_DEVICES = 20
DEFAULT_VERSIONS = 40
DEFAULT_CONCURRENCY = 10
DEFAULT_BUFFER = 5
DEFAULT_EPOCHS = 5
DEFAULT_LR = 0.2
DEFAULT_BATCH = 16
DEFAULT_HIDDEN = 64
DEFAULT_PLATFORMS = "android=1,ios=1"


def build_recipe(
    *,
    num_devices: int = DEFAULT_DEVICES,
    versions: int = DEFAULT_VERSIONS,
    concurrency: int = DEFAULT_CONCURRENCY,
    buffer: int = DEFAULT_BUFFER,
    epochs: int = DEFAULT_EPOCHS,
    lr: float = DEFAULT_LR,
    batch_size: int = DEFAULT_BATCH,
    hidden: int = DEFAULT_HIDDEN,
    trainer: str = "executorch",
    num_workers: int = 2,
    seed: int = 0,
    partition: str = "iid",
    alpha: float = 0.5,
    eval_data: tuple[Any, Any] | None = None,
) -> ETFedBuffRecipe:
    """The demo's recipe: an MLP ``64 -> hidden -> 10`` on the digits, trained with FedBuff.

    ``eval_data`` is the held-out test split ``(x, y)`` written into the job as ``eval.npz``.
    """
    import torch
    from torch import nn

    from edgefl._model import DeviceModel
    from edgefl._recipe import (
        DeviceManagerConfig,
        ETFedBuffRecipe,
        EvaluatorConfig,
        ModelManagerConfig,
        SimulationConfig,
    )

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    concurrency = min(concurrency, num_devices)
    buffer = min(buffer, concurrency)
    return ETFedBuffRecipe(
        job_name=DEMO_JOB_NAME,
        device_model=DeviceModel(net),
        input_shape=(batch_size, 64),
        output_shape=(batch_size,),
        model_manager_config=ModelManagerConfig(
            max_model_version=versions,
            num_updates_for_model=buffer,
            global_lr=1.0,
        ),
        device_manager_config=DeviceManagerConfig(
            device_selection_size=concurrency,
            min_hole_to_fill=1,
            # simulated devices answer in well under a second: a silent one (--dropout) loses
            # its slot after 10 s and leaves the pool after 30 s
            task_timeout=10.0,
            device_ttl=30.0,
        ),
        evaluator_config=None if eval_data is None else EvaluatorConfig(dataset=eval_data),
        simulation_config=SimulationConfig(
            num_devices=num_devices,
            num_workers=num_workers,
            trainer=trainer,
            dataset="digits",
            partition=partition,
            dirichlet_alpha=alpha,
            seed=seed,
        ),
        device_training_params={"epoch": epochs, "lr": lr, "batch_size": batch_size},
    )


@contextlib.contextmanager
def _captured_stderr() -> Iterator[None]:
    """Hide what native code and library imports print on file descriptor 2 (torchao's "Failed
    to load" lines, ExecuTorch's cpuinfo lines); shown again if the block raises."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, fd)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)


@contextlib.contextmanager
def _server_log(path: Path) -> Iterator[None]:
    """Send the embedded server's ``key=value`` log to ``path`` for the duration of the block,
    then put the loggers back as they were (the demo may run inside a larger program)."""
    import logging

    from edgefl._log import configure_logging

    names = ("edgefl", "hypercorn.error")
    saved = [
        (log, list(log.handlers), log.level, log.propagate)
        for log in (logging.getLogger(n) for n in names)
    ]
    with path.open("a", encoding="utf-8") as stream:
        configure_logging("info", stream)
        try:
            yield
        finally:
            for log, handlers, level, propagate in saved:
                log.handlers[:] = handlers
                log.setLevel(level)
                log.propagate = propagate


class DemoResult:
    """What :func:`run_demo` produced: the simulation report and the files written."""

    def __init__(self, report: SimulationReport, run_folder: Path, files: Mapping[str, Path]):
        self.report = report
        self.run_folder = run_folder
        self.files = dict(files)


def write_outputs(report: SimulationReport, run_folder: Path) -> dict[str, Path]:
    """Write ``metrics.jsonl``, ``accuracy.txt`` (the table) and ``accuracy.png`` (the plot)."""
    from edgefl._progress import format_table

    files: dict[str, Path] = {}
    metrics = run_folder / "metrics.jsonl"
    with metrics.open("w", encoding="utf-8") as f:
        for row in report.metrics:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")
    files["metrics"] = metrics
    rows = report.accuracy_by_version()
    losses = {int(m["version"]): m.get("loss") for m in report.metrics}
    table = format_table(
        ["version", "accuracy %", "test loss"],
        [
            [str(v), f"{a:.2f}", f"{losses[v]:.4f}" if isinstance(losses[v], float) else "-"]
            for v, a in rows
        ],
    )
    text = run_folder / "accuracy.txt"
    text.write_text(table + "\n", encoding="utf-8")
    files["table"] = text
    png = run_folder / "accuracy.png"
    _plot(rows, png, title=f"{report.job_name}: test accuracy per model version")
    files["plot"] = png
    return files


def _plot(rows: Sequence[tuple[int, float]], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    try:
        if rows:
            versions, accuracy = zip(*rows, strict=True)
            ax.plot(versions, accuracy, marker="o", markersize=3, linewidth=1.5)
        ax.set_xlabel("model version")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(True, alpha=0.3)
        ax.set_title(title)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def _default_run_folder() -> Path:
    base = Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    folder, n = base, 1
    while folder.exists():
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    return folder


def run_demo(
    *,
    run_folder: Path | None = None,
    num_devices: int = DEFAULT_DEVICES,
    versions: int = DEFAULT_VERSIONS,
    trainer: str = "executorch",
    seed: int = 0,
    num_workers: int = 2,
    platforms: str = DEFAULT_PLATFORMS,
    partition: str = "iid",
    alpha: float = 0.5,
    delay: tuple[float, float] = (0.0, 0.0),
    dropout: float = 0.0,
    progress: Any = None,
    handle_sigint: bool = False,
    stream: Any = None,
    **recipe_options: Any,
) -> DemoResult:
    """Build the digits job in ``run_folder``, run it with simulated devices, write the outputs.

    ``recipe_options`` go to :func:`build_recipe` (``concurrency``, ``buffer``, ``epochs``, ``lr``,
    ``batch_size``, ``hidden``).
    """
    from edgefl._data import prepare
    from edgefl._simulate import FleetConfig, parse_platform_mix, simulate_job

    out = stream if stream is not None else sys.stdout
    run_folder = Path(run_folder) if run_folder is not None else _default_run_folder()
    run_folder.mkdir(parents=True, exist_ok=True)
    mix = parse_platform_mix(platforms)
    config = FleetConfig(
        num_devices=num_devices,
        num_workers=num_workers,
        trainer=trainer,
        dataset="digits",
        partition=partition,  # type: ignore[arg-type]
        alpha=alpha,
        seed=seed,
        platform_mix=mix,
        delay=delay,
        dropout=dropout,
    )
    print(
        f"edgefl demo: {num_devices} simulated devices ("
        + ", ".join(f"{k} {v:.0%}" for k, v in mix.items())
        + f") learn handwritten digits with FedBuff; trainer: {trainer}",
        file=out,
        flush=True,
    )
    print(f"run folder: {run_folder}", file=out, flush=True)
    print("exporting the model to an ExecuTorch training program ...", file=out, flush=True)
    with _captured_stderr():
        prepared = prepare("digits", test_fraction=0.2, seed=seed)
        recipe = build_recipe(
            num_devices=num_devices,
            versions=versions,
            trainer=trainer,
            num_workers=num_workers,
            seed=seed,
            partition=partition,
            alpha=alpha,
            eval_data=prepared.test.take(),
            **recipe_options,
        )
        job_folder = recipe.export(run_folder / "job")
    with _server_log(run_folder / "server.log"):
        print(
            "starting the server and the training processes (a few seconds) ...",
            file=out,
            flush=True,
        )
        report = trio_run(
            simulate_job,
            job_folder,
            config,
            state_dir=run_folder / "state",
            progress=progress,
            handle_sigint=handle_sigint,
            worker_log=run_folder / "workers.log",
        )
    files = write_outputs(report, run_folder)
    return DemoResult(report, run_folder, files)


def trio_run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``trio.run(fn, *args, **kwargs)``."""
    import trio

    return trio.run(functools.partial(fn, *args, **kwargs))


# --------------------------------------------------------------------------------------------------
# edgefl-server demo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``edgefl-server demo``."""
    parser.add_argument(
        "--devices",
        type=int,
        default=DEFAULT_DEVICES,
        metavar="N",
        help="simulated devices (default: %(default)s)",
    )
    parser.add_argument(
        "--versions",
        type=int,
        default=DEFAULT_VERSIONS,
        metavar="N",
        help="model versions to train; version 1 is the initial model (default: %(default)s)",
    )
    parser.add_argument(
        "--trainer",
        default="executorch",
        metavar="NAME",
        help="'executorch': devices train the .pte they receive in the ExecuTorch runtime, as"
        " phones do; 'eager': the same model in PyTorch (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seed of the run (default: %(default)s)"
    )
    parser.add_argument(
        "--run-folder",
        type=Path,
        metavar="DIR",
        help="where the job, the server state and the results go"
        " (default: ./runs/demo-<timestamp>)",
    )
    parser.add_argument(
        "--platforms",
        default=DEFAULT_PLATFORMS,
        metavar="MIX",
        help="device kinds and weights: android, ios (the SDKs' JSON forms), python (NVFlare's"
        " simulator), cbor (our binary fast path); default: %(default)s",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        metavar="N",
        help="training processes (default: %(default)s)",
    )
    parser.add_argument(
        "--partition",
        choices=("iid", "dirichlet"),
        default="iid",
        help="how the digits are split across devices (default: %(default)s)",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=0.5,
        metavar="A",
        help="Dirichlet concentration for --partition dirichlet (default: %(default)s)",
    )
    parser.add_argument(
        "--delay",
        default="0",
        metavar="LOW[:HIGH]",
        help="extra seconds per task, a speed drawn per device (default: %(default)s)",
    )
    parser.add_argument(
        "--dropout",
        type=float,
        default=0.0,
        metavar="P",
        help="probability that a device takes a task and vanishes (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    """``edgefl-server demo``: 0 when the job finished, 130 when interrupted, 1 otherwise."""
    from edgefl._progress import Progress, format_table
    from edgefl._simulate import SimulationError, format_summary, parse_delay

    try:
        delay = parse_delay(args.delay)
        result = run_demo(
            run_folder=args.run_folder,
            num_devices=args.devices,
            versions=args.versions,
            trainer=args.trainer,
            seed=args.seed,
            num_workers=args.workers,
            platforms=args.platforms,
            partition=args.partition,
            alpha=args.alpha,
            delay=delay,
            dropout=args.dropout,
            progress=Progress(),
            handle_sigint=True,
        )
    except (SimulationError, ValueError) as exc:
        print(f"edgefl-server demo: {exc}", file=sys.stderr)
        return 2
    report = result.report
    print()
    rows = report.accuracy_by_version()
    if rows:
        print(format_table(["version", "test accuracy %"], [[str(v), f"{a:.2f}"] for v, a in rows]))
        print()
    summary = format_summary(report).split("\n\n")[0]
    print(summary)
    print()
    print(f"run folder: {result.run_folder}")
    for label, path in (
        ("accuracy table", result.files["table"]),
        ("accuracy plot", result.files["plot"]),
        ("metrics", result.files["metrics"]),
        ("job folder", result.run_folder / "job"),
        ("server log", result.run_folder / "server.log"),
    ):
        print(f"  {label + ':':<16}{path}")
    if not report.finished:
        return 130 if report.error is None else 1
    return 0
