"""Per-version programs by weight patching: exactly the new weights, exactly a re-export's training.

The template of each architecture comes from the session's shared export; comparisons are against
full re-exports of the model holding the same weights, run in the real ExecuTorch runtime.
"""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from _export_testlib import EagerStep, RuntimeStep, batch, model_with, weights_like

from edgefl import ExportError
from edgefl._export import (
    GATE_ATOL,
    GATE_RTOL,
    ParamSlot,
    ProgramTemplate,
    _export_unchecked,
    export_training_program,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from _export_testlib import Exported

ALL = ["mlp", "pool_cnn", "strided_bn_cnn"]


def _classes(job: Exported) -> int:
    return int(job.model.net(torch.zeros((1, *job.input_shape[1:]))).shape[1])


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_template_offsets_come_from_the_program_structure(
    templates: Callable[[str], Exported], name: str
) -> None:
    job = templates(name)
    relocated = ProgramTemplate.from_program(job.template.program)
    assert relocated.slots == job.template.slots
    assert list(job.template.param_shapes) == [
        n.removeprefix("net.") for n, p in job.model.named_parameters() if p.requires_grad
    ]
    # Every parameter has its own bytes, and they hold the initial weights.
    spans = sorted((s.offset, s.offset + s.nbytes) for s in job.template.slots)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans))
    held = job.template.weights()
    for param, value in job.weights.items():
        assert held[param].tobytes() == value.tobytes()


@pytest.mark.slow
def test_zero_biases_are_shared_by_a_plain_export_but_not_by_the_template(
    templates: Callable[[str], Exported],
) -> None:
    job = templates("mlp")
    # Tied: fc3.weight is fc2.weight (one parameter); frozen.weight does not train.
    assert list(job.weights) == [
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
        "fc3.bias",
        "frozen.bias",
        "head.weight",
        "head.bias",
    ]
    assert not any(job.weights[n].any() for n in job.weights if n.endswith("bias"))
    # A plain export of the same weights (here in a worker thread) stores the equal 16-float
    # zero biases once...
    result: list[bytes] = []
    worker = threading.Thread(
        target=lambda: result.append(
            _export_unchecked(job.model, job.input_shape, job.output_shape)[0]
        )
    )
    worker.start()
    worker.join()
    plain = result[0]
    assert len(plain) < len(job.template.program)
    with pytest.raises(ExportError, match="overlap"):
        ProgramTemplate.from_program(plain)
    # ... and trains exactly like the template, which holds the same weights in separate buffers.
    x, y = batch(job.input_shape, 7, _classes(job))
    patched, reexported = RuntimeStep(job.template.program, x, y), RuntimeStep(plain, x, y)
    assert torch.equal(patched.loss, reexported.loss)
    for param, grad in reexported.grads.items():
        assert torch.equal(patched.grads[param], grad)
        assert torch.equal(patched.params[param], reexported.params[param])


@pytest.mark.slow
def test_patched_programs_equal_full_reexports(templates: Callable[[str], Exported]) -> None:
    """Two architectures, new distinct weights: the patched bytes equal a full re-export's (the
    two re-exports run concurrently in two threads: the export lock serialises them), and the
    runtime holds exactly the new weights and trains like PyTorch with them."""
    jobs = [templates("mlp"), templates("pool_cnn")]
    new = [weights_like(job.template, seed=7) for job in jobs]
    updated = [model_with(job.model, w) for job, w in zip(jobs, new, strict=True)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [
            pool.submit(export_training_program, m, job.input_shape, job.output_shape)
            for job, m in zip(jobs, updated, strict=True)
        ]
        reexports = [f.result() for f in futures]
    for job, weights, model, reexport in zip(jobs, new, updated, reexports, strict=True):
        patched = job.template.patch(weights)
        assert patched == reexport
        assert patched != job.template.program
        x, y = batch(job.input_shape, 7, _classes(job), seed=3)
        rt = RuntimeStep(patched, x, y)
        for param, value in weights.items():
            assert rt.params["net." + param].numpy().tobytes() == value.tobytes()
        eager = EagerStep(model, x, y)
        torch.testing.assert_close(rt.loss, eager.loss, rtol=GATE_RTOL, atol=GATE_ATOL)
        for param, grad in eager.grads.items():
            torch.testing.assert_close(rt.grads[param], grad, rtol=GATE_RTOL, atol=GATE_ATOL)


@pytest.mark.slow
def test_patching_zero_weights_into_the_template(templates: Callable[[str], Exported]) -> None:
    """Weights with many equal tensors (all zeros but one layer) still land in their own slots."""
    job = templates("strided_bn_cnn")
    weights = {n: np.zeros(s, dtype=np.float32) for n, s in job.template.param_shapes.items()}
    weights["head.weight"] = weights_like(job.template, seed=1)["head.weight"]
    x, y = batch(job.input_shape, 1, _classes(job))
    rt = RuntimeStep(job.template.patch(weights), x, y)
    for param, value in weights.items():
        assert rt.params["net." + param].numpy().tobytes() == value.tobytes()
    eager = EagerStep(model_with(job.model, weights), x, y)
    torch.testing.assert_close(rt.loss, eager.loss, rtol=GATE_RTOL, atol=GATE_ATOL)
    for param, grad in eager.grads.items():
        torch.testing.assert_close(rt.grads[param], grad, rtol=GATE_RTOL, atol=GATE_ATOL)


@pytest.mark.slow
def test_patch_refuses_weights_that_do_not_fit(templates: Callable[[str], Exported]) -> None:
    template = templates("mlp").template
    good = weights_like(template, seed=2)
    with pytest.raises(ValueError, match=r"missing \['head.bias'\]"):
        template.patch({k: v for k, v in good.items() if k != "head.bias"})
    with pytest.raises(ValueError, match=r"unexpected \['fc3.weight'\]"):
        template.patch({**good, "fc3.weight": good["fc2.weight"]})  # tied: not a second slot
    with pytest.raises(ValueError, match=r"weights\['fc1.weight'\] has shape \(12, 16\)"):
        template.patch({**good, "fc1.weight": good["fc1.weight"].T.copy()})
    with pytest.raises(ValueError, match=r"weights\['head.bias'\] must be a float"):
        template.patch({**good, "head.bias": np.zeros(4, dtype=np.int64)})
    # float64 is accepted and stored as float32.
    as64 = {k: v.astype(np.float64) for k, v in good.items()}
    assert template.patch(as64) == template.patch(good)
    assert template.program == templates("mlp").template.program  # patch never mutates


@pytest.mark.slow
def test_template_json_round_trip_and_damage(templates: Callable[[str], Exported]) -> None:
    template = templates("mlp").template
    doc = template.to_json()
    again = ProgramTemplate.from_json(template.program, doc)
    assert again.slots == template.slots
    with pytest.raises(ValueError, match="SHA-256"):
        ProgramTemplate.from_json(template.program[:-1] + b"\x01", doc)
    with pytest.raises(ValueError, match="truncated"):
        ProgramTemplate.from_json(template.program[:-16], doc)
    params = doc["params"]
    assert isinstance(params, list)
    moved = {**doc, "params": [{**params[0], "offset": len(template.program)}, *params[1:]]}
    with pytest.raises(ValueError, match="out of range"):
        ProgramTemplate.from_json(template.program, moved)
    overlapping = {**doc, "params": [params[0], {**params[1], "offset": params[0]["offset"]}]}
    with pytest.raises(ValueError, match="overlap"):
        ProgramTemplate.from_json(template.program, overlapping)


def test_template_refuses_a_program_that_is_not_one() -> None:
    with pytest.raises(ValueError, match="not an ExecuTorch program"):
        ProgramTemplate(program=b"\x00" * 64, slots=())
    with pytest.raises(ValueError, match="nbytes 8 does not match shape"):
        ProgramTemplate(
            program=_minimal_pte(), slots=(ParamSlot(name="w", shape=(3,), offset=48, nbytes=8),)
        )


def _minimal_pte() -> bytes:
    """A byte string with a valid ExecuTorch file identifier and extended header (no program)."""
    header = b"eh00" + (32).to_bytes(4, "little") + (64).to_bytes(8, "little")
    header += (64).to_bytes(8, "little") + (0).to_bytes(8, "little")
    return b"\x00" * 4 + b"ET12" + header + b"\x00" * (64 - 8 - len(header))
