"""Job folders: written by a user's script, loaded equal, and refused when damaged."""

from __future__ import annotations

import json
import shutil
import tomllib
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from edgefl import JobFolderError, load_job_folder
from edgefl._jobfolder import FILES, JobSpec, _rewrite_manifest, write_job_folder

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

pytestmark = pytest.mark.slow


def test_user_script_with_main_models_exports_a_loadable_job(
    user_job: tuple[Path, dict[str, Any]],
) -> None:
    folder, report = user_job
    # Written in a process whose model classes lived in __main__; loaded here without them.
    assert report["spec_equal"] is True
    assert report["weights_bitwise"] is True
    assert "DefaultGlobalLRWarning" in report["warnings"]
    assert sorted(p.name for p in folder.iterdir()) == sorted([*FILES, "eval.npz"])
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name, "report.json"]

    job = load_job_folder(folder, verify_program=True)
    spec = job.spec
    assert spec.name == "cifar10_et"
    assert spec.method == "cnn"
    assert spec.input_shape == (32, 3, 32, 32)
    assert spec.output_shape == (32,)
    assert spec.batch_size == 32
    assert spec.model_manager.max_model_version == 3
    assert spec.model_manager.num_updates_for_model == 8
    assert spec.model_manager.update_timeout == 1000.0
    assert spec.model_manager.global_lr == 0.01
    assert spec.device_manager.device_selection_size == 8
    assert spec.device_manager.min_hole_to_fill == 8
    assert spec.device_training_params == {"epoch": 3, "lr": 0.0001, "batch_size": 32}
    assert spec.aggregator.name == "fedbuff"
    assert spec.aggregator.args == {
        "normalization": "count",
        "staleness": "none",
        "staleness_exponent": 0.5,
    }
    assert spec.selector.name == "random"
    assert spec.evaluator.name == "classification"
    assert spec.simulation is not None
    assert spec.simulation.num_devices == 8
    assert list(job.param_shapes) == [
        "conv1.weight",
        "conv1.bias",
        "conv2.weight",
        "conv2.bias",
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
    ]
    assert job.param_shapes["conv1.weight"] == (6, 3, 5, 5)
    assert job.template.program == (folder / "template.pte").read_bytes()
    assert job.template.patch(job.initial_weights) == job.template.program
    data = job.eval_data()
    assert data is not None
    assert data[0].shape == (40, 3, 32, 32)
    assert data[1].dtype == np.int64


def test_spec_survives_a_toml_round_trip(user_job: tuple[Path, dict[str, Any]]) -> None:
    spec = load_job_folder(user_job[0]).spec
    import tomli_w

    assert JobSpec.from_toml_dict(tomllib.loads(tomli_w.dumps(spec.to_toml_dict()))) == spec


def _copy(user_job: tuple[Path, dict[str, Any]], tmp_path: Path) -> Path:
    return shutil.copytree(user_job[0], tmp_path / "job")


@pytest.mark.parametrize("name", FILES)
def test_missing_file_is_refused(
    user_job: tuple[Path, dict[str, Any]], tmp_path: Path, name: str
) -> None:
    folder = _copy(user_job, tmp_path)
    (folder / name).unlink()
    with pytest.raises(JobFolderError, match="missing") as info:
        load_job_folder(folder)
    assert info.value.file == name


def test_missing_eval_data_is_refused_when_the_evaluator_needs_it(
    user_job: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    folder = _copy(user_job, tmp_path)
    (folder / "eval.npz").unlink()
    _rewrite_manifest(folder)
    with pytest.raises(JobFolderError, match="classification evaluator needs it") as info:
        load_job_folder(folder)
    assert info.value.file == "eval.npz"


def _edit_toml(folder: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    import tomli_w

    doc = tomllib.loads((folder / "job.toml").read_text())
    edit(doc)
    (folder / "job.toml").write_text(tomli_w.dumps(doc))


def _edit_json(folder: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads((folder / "template.json").read_text())
    edit(doc)
    (folder / "template.json").write_text(json.dumps(doc))


def _set_weight(folder: Path, name: str, value: np.ndarray) -> None:
    with np.load(folder / "weights.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays[name] = value
    np.savez(folder / "weights.npz", **arrays)  # type: ignore[arg-type]


def _damage(folder: Path, how: str) -> None:
    pte = folder / "template.pte"
    match how:
        case "truncated_pte":
            pte.write_bytes(pte.read_bytes()[: len(pte.read_bytes()) // 2])
        case "flipped_pte_byte":
            data = bytearray(pte.read_bytes())
            data[-100] ^= 0xFF
            pte.write_bytes(bytes(data))
        case "bad_toml":
            (folder / "job.toml").write_text("name = [unclosed\n")
        case "invalid_setting":
            _edit_toml(folder, lambda d: d["model_manager"].update(max_model_version=1))
        case "unknown_key":
            _edit_toml(folder, lambda d: d["device_manager"].update(selection_size=8))
        case "wrong_npz_shape":
            _set_weight(folder, "fc2.bias", np.zeros(11, dtype=np.float32))
        case "wrong_npz_dtype":
            _set_weight(folder, "fc2.bias", np.zeros(10, dtype=np.float64))
        case "changed_weight":
            with np.load(folder / "weights.npz") as npz:
                bias = npz["fc2.bias"] + np.float32(1.0)
            _set_weight(folder, "fc2.bias", bias)
        case "offset_out_of_range":
            _edit_json(folder, lambda d: d["params"][-1].update(offset=10**9))
        case "offset_moved":
            _edit_json(folder, lambda d: d["params"][0].update(offset=d["params"][0]["offset"] - 4))
        case "bad_json":
            (folder / "template.json").write_text("{")
        case "truncated_pt2":
            pt2 = folder / "model.pt2"
            pt2.write_bytes(pt2.read_bytes()[:-200])
        case "garbage_pt2":
            (folder / "model.pt2").write_bytes(b"not an archive")
        case "eval_wrong_shape":
            x, y = np.zeros((4, 3, 16, 16), np.float32), np.zeros(4, np.int64)
            np.savez(folder / "eval.npz", x=x, y=y)
        case "bad_manifest":
            (folder / "manifest.json").write_text('{"format": 1, "files": {"weights.npz": 1}}')
        case _:
            raise AssertionError(how)


# (damage, rewrite manifest.json afterwards, file named, problem named)
DAMAGE = [
    # Damage as a disk or a careless copy does it: the manifest catches it.
    ("truncated_pte", False, "template.pte", r"manifest\.json records \d+ \(truncated"),
    ("flipped_pte_byte", False, "template.pte", "SHA-256 differs"),
    ("changed_weight", False, "weights.npz", "SHA-256 differs"),
    ("truncated_pt2", False, "model.pt2", "truncated"),
    ("bad_manifest", False, "manifest.json", "bad entry for weights.npz"),
    # Files that are consistent with the manifest but wrong: each check names its file.
    ("truncated_pte", True, "template.pte", "truncated"),
    ("bad_toml", False, "job.toml", "not valid TOML"),
    ("invalid_setting", False, "job.toml", "max_model_version must be an integer >= 2"),
    ("unknown_key", False, "job.toml", "unknown key.*selection_size"),
    ("wrong_npz_shape", True, "weights.npz", r"'fc2.bias' is float32 \(11,\)"),
    ("wrong_npz_dtype", True, "weights.npz", "'fc2.bias' is float64"),
    ("changed_weight", True, "template.pte", "fc2.bias.*not the weights in weights.npz"),
    ("offset_out_of_range", True, "template.json", "out of range"),
    ("offset_moved", True, "template.pte", "conv1.weight.*not the weights in weights.npz"),
    ("bad_json", True, "template.json", "not valid JSON"),
    ("garbage_pt2", True, "model.pt2", "not a torch.export archive"),
    ("eval_wrong_shape", True, "eval.npz", r"x must be float32 \[N, 3, 32, 32\]"),
]


@pytest.mark.parametrize(
    ("how", "rewrite", "file", "problem"),
    DAMAGE,
    ids=[f"{d[0]}{'-consistent' if d[1] else ''}" for d in DAMAGE],
)
def test_damaged_folder_is_refused_naming_file_and_problem(
    user_job: tuple[Path, dict[str, Any]],
    tmp_path: Path,
    how: str,
    rewrite: bool,
    file: str,
    problem: str,
) -> None:
    folder = _copy(user_job, tmp_path)
    _damage(folder, how)
    if rewrite:
        _rewrite_manifest(folder)
    with pytest.raises(JobFolderError, match=problem) as info:
        load_job_folder(folder)
    assert info.value.file == file
    assert str(folder / file) in str(info.value)


def test_unlisted_eval_data_is_refused(
    user_job: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    folder = _copy(user_job, tmp_path)
    (folder / "eval.npz").rename(tmp_path / "eval.npz")
    _rewrite_manifest(folder)
    (tmp_path / "eval.npz").rename(folder / "eval.npz")
    with pytest.raises(JobFolderError, match=r"not listed in manifest\.json") as info:
        load_job_folder(folder)
    assert info.value.file == "eval.npz"


def test_rewriting_replaces_a_job_folder_and_refuses_anything_else(
    user_job: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    job = load_job_folder(user_job[0])
    with np.load(user_job[0] / "eval.npz") as npz:
        eval_data = (npz["x"], npz["y"])
    parts: dict[str, Any] = {
        "spec": job.spec,
        "weights": job.initial_weights,
        "template": job.template,
        "inference_program": job.model_path.read_bytes(),
        "eval_data": eval_data,
    }
    target = tmp_path / "jobs" / "cifar"
    assert write_job_folder(target, **parts) == target
    (target / "stale-file").write_text("from an older export")
    write_job_folder(target, **parts)  # replaces the old job folder as a whole
    assert not (target / "stale-file").exists()
    assert load_job_folder(target).spec == job.spec
    assert sorted(p.name for p in target.parent.iterdir()) == ["cifar"]

    other = tmp_path / "not-a-job"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a job folder"):
        write_job_folder(other, **parts)
    assert (other / "notes.txt").read_text() == "keep me"

    # A write that fails leaves nothing behind.
    wrong = {**job.initial_weights, "fc2.bias": job.initial_weights["fc2.bias"] + 1}
    with pytest.raises(ValueError, match=r"does not hold weights\['fc2.bias'\]"):
        write_job_folder(tmp_path / "failed", **{**parts, "weights": wrong})
    assert not (tmp_path / "failed").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs", "not-a-job"]
