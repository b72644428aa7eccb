"""Shared test helpers: EDIP client headers exactly as the SDKs send them, and a driver for JobCore.

The header builders reproduce EDIP §12: Android sends raw query strings in both info headers on
every endpoint; iOS sends query strings on ``/job`` and JSON objects on ``/task`` and ``/result``
(``{}`` for user info). :class:`CoreDriver` plays the job runtime's part around a
:class:`~edgefl._job.JobCore` (commit every step to a real :class:`~edgefl._store.Store`, look up
task records, publish payloads), so unit tests run the real core, plugins and SQLite without HTTP.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import random
import shutil
import tempfile
import tomllib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import tomli_w

from aggregators.fedbuff import FedBuff
from edgefl._job import JobConfig, JobCore
from edgefl.api import AggregatorSettings
from plugins.selectors import RandomSelector
from protocol import (
    Cookie,
    RawResult,
    ResultReport,
    TaskReply,
    encode_tensor_map,
    parse_identity,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from edgefl._store import Store
    from protocol import DeviceIdentity, ResultReply, TensorForm

__all__ = [
    "ANDROID_ID",
    "IOS_ID",
    "XOR_X",
    "XOR_Y",
    "CoreDriver",
    "android_headers",
    "identity",
    "ios_headers",
    "job_variant",
    "program_weights",
    "result_body",
    "train_xor",
    "xor_job",
]

ANDROID_ID = "NVFlare_Android-8f14e45fceea167a"
IOS_ID = "E621E1F8-C36C-495A-93FC-0C247A3E6E5F"


def android_headers(device_id: str = ANDROID_ID) -> dict[str, str]:
    """Android's headers (EDIP §12 V1/V4): raw, not percent-encoded query strings."""
    user = device_id.removeprefix("NVFlare_Android-")
    return {
        "Content-Type": "application/json; charset=utf-8",
        "X-Flare-Device-ID": device_id,
        "X-Flare-Device-Info": f"device_id={device_id}&app_name=ExecuTorch Demo"
        "&app_version=1.0&platform=android",
        "X-Flare-User-Info": f"user_id={user}",
    }


def ios_headers(device_id: str = IOS_ID, *, endpoint: str = "task") -> dict[str, str]:
    """iOS's headers (EDIP §2.2, §12 V2): query strings on ``/job``, JSON on the others."""
    if endpoint == "job":
        info = f"device_id={device_id}&platform=ios&app_version=1.0"
        user = ""
    else:
        info = orjson.dumps(
            {"app_version": "1.0", "device_id": device_id, "platform": "ios"}
        ).decode()
        user = "{}"
    return {
        "Content-Type": "application/json",
        "X-Flare-Device-ID": device_id,
        "X-Flare-Device-Info": info,
        "X-Flare-User-Info": user,
    }


def identity(device_id: str, platform: str = "android") -> DeviceIdentity:
    """The parsed identity of a device of ``platform`` (``android``, ``ios`` or ``generic``)."""
    if platform == "android":
        return parse_identity(android_headers(device_id))
    if platform == "ios":
        return parse_identity(ios_headers(device_id))
    return parse_identity({"X-Flare-Device-ID": device_id})


def result_body(
    delta: Mapping[str, np.ndarray],
    *,
    form: TensorForm = "android",
    cookie: Mapping[str, object] | None = None,
) -> dict[str, Any]:
    """A ``/result`` body as a device of ``form`` writes it (EDIP §6.2, §12 V4)."""
    kind = "number" if form == "android" else "et_tensor_diff"
    meta: dict[str, object]
    if form == "ios":
        meta = {"training_completed": True, "epochs": 1, "dataset": "app_cpp_dataset"}
    else:
        meta = {"learning_rate": 0.1, "batch_size": 1, "method": "xor", "epochs": 1}
    body: dict[str, Any] = {
        "result": {"kind": kind, "data": encode_tensor_map(delta, form), "meta": meta}
    }
    if cookie is not None:
        body["cookie"] = dict(cookie)
    return body


class CoreDriver:
    """Runs a JobCore the way JobRuntime does: every step is committed to a real Store.

    Args:
        store: where the job's state is committed.
        schema: parameter name -> shape.
        weights: the initial weights.
        aggregator_args: extra FedBuff arguments (e.g. ``staleness``).
        global_lr, k, max_model_history: FedBuff settings.
        **config: JobConfig overrides (device_selection_size, task_timeout, ...).
    """

    def __init__(
        self,
        store: Store,
        *,
        schema: Mapping[str, tuple[int, ...]],
        weights: Mapping[str, np.ndarray],
        global_lr: float = 1.0,
        k: int = 3,
        max_model_history: int | None = None,
        staleness_weight: bool = False,
        aggregator_args: Mapping[str, Any] | None = None,
        folder: str = "/jobs/test",
        seed: int = 0,
        **config: Any,
    ) -> None:
        self.store = store
        row, resumed = store.open_job(
            folder=folder, fingerprint="fp", name="xor_et", schema=schema, now=0.0
        )
        self.job_id = row.job_id
        self.resumed = resumed
        selection_size = config.pop("device_selection_size", 8)
        self.config = JobConfig(
            job_id=row.job_id,
            name="xor_et",
            schema=dict(schema),
            max_model_history=max_model_history,
            device_selection_size=selection_size,
            **{"min_devices_to_start": 1, "max_model_version": 10, **config},
        )
        self.aggregator = FedBuff(
            AggregatorSettings(
                num_updates_for_model=k,
                global_lr=global_lr,
                staleness_weight=staleness_weight,
                max_model_history=max_model_history,
                device_selection_size=selection_size,
            ),
            **(aggregator_args or {}),
        )
        counter = itertools.count(1)
        self.core = JobCore(
            self.config,
            aggregator=self.aggregator,
            selector=RandomSelector(),
            initial_weights={k: np.asarray(v, dtype=np.float32) for k, v in weights.items()},
            rng=random.Random(seed),
            new_task_id=lambda: f"task-{next(counter)}",
        )
        if resumed:
            self.core.restore(
                version=row.current_version,
                weights=store.read_version(row.job_id, row.current_version),
                next_ticket=row.next_ticket,
                finished=row.finished,
                counters=row.counters,
                aggregator_state=row.aggregator_state,
                devices=store.devices(row.job_id),
                pending=store.pending_updates(row.job_id),
                now=0.0,
            )
        self.now = 0.0
        self.core.start(self.now)
        self.commit()
        self.publish()

    def commit(self) -> None:
        self.store.commit(self.job_id, self.core.take_changes())
        self.core.take_new_versions()

    def publish(self) -> None:
        """Make the latest version the one handed out (the runtime patches a program here)."""
        self.core.set_payload(self.core.version, f"pte-v{self.core.version}")

    def poll(
        self, device_id: str, *, cookie: Cookie | None = None, platform: str = "android"
    ) -> TaskReply:
        reply = self.core.poll(identity(device_id, platform), cookie, self.now)
        self.commit()
        return reply

    def task(self, device_id: str, *, platform: str = "android") -> TaskReply:
        """Poll until the device gets a task (it must be selectable)."""
        reply = self.poll(device_id, platform=platform)
        if reply.task_id is None:
            reply = self.poll(device_id, platform=platform)
        assert reply.task_id is not None, reply
        return reply

    def report(
        self,
        device_id: str,
        task_id: str,
        delta: Mapping[str, Any],
        *,
        form: TensorForm = "android",
        status: str = "OK",
        data: Mapping[str, object] | None = None,
        kind: str = "number",
    ) -> ResultReply:
        arrays = {k: np.asarray(v, dtype=np.float32) for k, v in delta.items()}
        report = ResultReport(
            job_id=self.job_id,
            task_id=task_id,
            task_name="train",
            status=status,
            result=RawResult(
                kind=kind, data=encode_tensor_map(arrays, form) if data is None else data
            ),
        )
        record = None
        if not self.core.owns_open_task(device_id, task_id):
            record = self.store.task(self.job_id, task_id)
        reply = self.core.report(device_id, report, record, self.now)
        self.commit()
        return reply

    def tick(self, dt: float, *, sweep: bool = False) -> None:
        self.now += dt
        self.core.tick(self.now, sweep_devices=sweep)
        self.commit()


# --------------------------------------------------------------------------------------------------
# Job folders

XOR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
XOR_Y = np.array([0, 1, 1, 0], dtype=np.int64)


@functools.cache
def xor_job() -> Path:
    """A job folder for the EDIP golden-vector XOR net (2 -> 4 -> sigmoid -> 2), exported once per
    test process with ``ETFedBuffRecipe(...).export`` (about a second); use :func:`job_variant` to
    get a copy with other settings."""
    import torch
    from torch import nn

    from edgefl import (
        DeviceManagerConfig,
        DeviceModel,
        ETFedBuffRecipe,
        EvaluatorConfig,
        ModelManagerConfig,
    )

    class XorNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear1 = nn.Linear(2, 4)
            self.sigmoid = nn.Sigmoid()
            self.linear2 = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear2(self.sigmoid(self.linear1(x)))

    torch.manual_seed(7)
    recipe = ETFedBuffRecipe(
        job_name="xor_et",
        device_model=DeviceModel(XorNet()),
        input_shape=(1, 2),
        output_shape=(1,),
        model_manager_config=ModelManagerConfig(
            global_lr=1.0, num_updates_for_model=2, max_model_version=3
        ),
        device_manager_config=DeviceManagerConfig(device_selection_size=2),
        evaluator_config=EvaluatorConfig(dataset=(XOR_X, XOR_Y)),
        device_training_params={"epoch": 3, "lr": 0.0001, "batch_size": 1},
        method="xor",
    )
    root = Path(tempfile.mkdtemp(prefix="edgefl-test-jobs-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return recipe.export(root / "xor_et")


def job_variant(
    dest: Path,
    *,
    name: str | None = None,
    model_manager: Mapping[str, object] | None = None,
    device_manager: Mapping[str, object] | None = None,
    evaluator: str | None = None,
) -> Path:
    """A copy of :func:`xor_job` at ``dest`` with some ``job.toml`` values changed."""
    shutil.copytree(xor_job(), dest)
    path = dest / "job.toml"
    doc = tomllib.loads(path.read_text())
    if name is not None:
        doc["name"] = name
    doc["model_manager"].update(model_manager or {})
    doc["device_manager"].update(device_manager or {})
    if evaluator is not None:
        doc["evaluator"] = {"name": evaluator, "eval_frequency": 1, "args": {}}
    path.write_text(tomli_w.dumps(doc))
    return dest


def train_xor(
    program: bytes, *, steps: int = 4, lr: float = 0.1, offset: int = 0
) -> dict[str, np.ndarray]:
    """Train a received ``.pte`` the way a phone does, with ExecuTorch's training runtime: SGD over
    the XOR samples (batch 1), ``steps`` steps starting at sample ``offset``.

    Returns:
        ``trained - received`` per parameter, names without ``net.`` (what a device reports).
    """
    import torch
    from executorch.extension.training import (
        _load_for_executorch_for_training_from_buffer,
        get_sgd_optimizer,
    )

    with warnings.catch_warnings():  # "This API is experimental"
        warnings.simplefilter("ignore")
        module = _load_for_executorch_for_training_from_buffer(program)  # ``program`` stays alive
    initial: dict[str, torch.Tensor] | None = None
    optimizer = None
    for step in range(steps):
        i = (offset + step) % len(XOR_X)
        x, y = torch.from_numpy(XOR_X[i : i + 1]), torch.from_numpy(XOR_Y[i : i + 1])
        module.forward_backward("forward", (x, y))
        params = module.named_parameters()  # only available after a first step
        if initial is None:
            initial = {k: v.detach().clone() for k, v in params.items()}
            optimizer = get_sgd_optimizer(params, lr, 0.0, 0.0, 0.0, False)
        assert optimizer is not None
        optimizer.step(module.named_gradients())
    assert initial is not None
    final = module.named_parameters()
    return {
        k.removeprefix("net."): (final[k].detach() - initial[k]).numpy().astype(np.float32)
        for k in initial
    }


def program_weights(program: bytes) -> dict[str, np.ndarray]:
    """The weights inside a ``.pte`` as the ExecuTorch runtime sees them (without ``net.``)."""
    import torch
    from executorch.extension.training import _load_for_executorch_for_training_from_buffer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = _load_for_executorch_for_training_from_buffer(program)
    module.forward_backward("forward", (torch.from_numpy(XOR_X[:1]), torch.from_numpy(XOR_Y[:1])))
    return {
        k.removeprefix("net."): v.detach().numpy().copy()
        for k, v in module.named_parameters().items()
    }
