"""Data sets and partitions of simulated devices (edgefl._data)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefl._data import (
    DataError,
    load_dataset,
    parse_dataset_spec,
    partition,
    partition_dirichlet,
    partition_iid,
    prepare,
    read_cifar_batch,
)


def _assert_partition(parts: list[np.ndarray], universe: np.ndarray, min_size: int) -> None:
    joined = np.concatenate(parts)
    assert joined.size == universe.size, "a sample is lost or duplicated"
    assert np.array_equal(np.sort(joined), np.sort(universe)), "parts do not cover the samples"
    assert all(p.size >= min_size for p in parts)
    assert all(p.dtype == np.int64 for p in parts)
    assert all(np.all(np.diff(p) > 0) for p in parts), "parts are sorted and duplicate-free"


@given(
    n=st.integers(1, 400),
    devices=st.integers(1, 40),
    min_size=st.integers(1, 10),
    seed=st.integers(0, 2**32 - 1),
)
def test_iid_partition_is_disjoint_covering_balanced(
    n: int, devices: int, min_size: int, seed: int
) -> None:
    universe = np.arange(1000, 1000 + n, dtype=np.int64) * 3
    if devices * min_size > n:
        with pytest.raises(DataError, match="num_devices"):
            partition_iid(universe, devices, seed=seed, min_size=min_size)
        return
    parts = partition_iid(universe, devices, seed=seed, min_size=min_size)
    assert len(parts) == devices
    _assert_partition(parts, universe, min_size)
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 1


@given(
    n=st.integers(1, 400),
    devices=st.integers(1, 30),
    min_size=st.integers(1, 8),
    classes=st.integers(1, 10),
    alpha=st.floats(0.01, 100.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_dirichlet_partition_is_disjoint_covering_and_fills_every_device(
    n: int, devices: int, min_size: int, classes: int, alpha: float, seed: int
) -> None:
    universe = np.arange(n, dtype=np.int64) + 7
    labels = np.random.default_rng(seed).integers(0, classes, size=n)
    if devices * min_size > n:
        with pytest.raises(DataError, match="num_devices"):
            partition_dirichlet(
                universe, labels, devices, alpha=alpha, seed=seed, min_size=min_size
            )
        return
    parts = partition_dirichlet(
        universe, labels, devices, alpha=alpha, seed=seed, min_size=min_size
    )
    assert len(parts) == devices
    _assert_partition(parts, universe, min_size)


def test_partitions_are_deterministic_per_seed() -> None:
    prepared = prepare("digits", seed=0)
    for scheme in ("iid", "dirichlet"):
        a = partition(prepared, 12, scheme=scheme, alpha=0.3, seed=4, min_size=8)  # type: ignore[arg-type]
        b = partition(prepared, 12, scheme=scheme, alpha=0.3, seed=4, min_size=8)  # type: ignore[arg-type]
        c = partition(prepared, 12, scheme=scheme, alpha=0.3, seed=5, min_size=8)  # type: ignore[arg-type]
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
        assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def _mean_dominant_share(parts: list[np.ndarray], labels: np.ndarray) -> float:
    return float(np.mean([np.bincount(labels[p], minlength=10).max() / p.size for p in parts]))


def test_dirichlet_skews_label_distributions_and_large_alpha_approaches_iid() -> None:
    prepared = prepare("digits", seed=0)
    y = prepared.pool.y
    iid = _mean_dominant_share(partition(prepared, 20, scheme="iid", seed=1), y)
    skewed = _mean_dominant_share(
        partition(prepared, 20, scheme="dirichlet", alpha=0.1, seed=1, min_size=8), y
    )
    flat = _mean_dominant_share(
        partition(prepared, 20, scheme="dirichlet", alpha=1000.0, seed=1), y
    )
    # IID devices hold ~10 % of each class; alpha=0.1 leaves most devices dominated by one class.
    assert iid < 0.3
    assert skewed > 0.55
    assert abs(flat - iid) < 0.1


def test_partition_rejects_bad_arguments_by_name() -> None:
    prepared = prepare("digits")
    with pytest.raises(DataError, match="scheme"):
        partition(prepared, 4, scheme="sharded")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="alpha"):
        partition(prepared, 4, scheme="dirichlet", alpha=0.0)
    with pytest.raises(DataError, match="num_devices"):
        partition(prepared, 0)
    with pytest.raises(DataError, match="num_devices=2000"):
        partition(prepared, 2000, min_size=1)


def test_digits_holdout_is_stratified_and_never_trained_on() -> None:
    prepared = prepare("digits", test_fraction=0.2, seed=3)
    pool, test = prepared.pool, prepared.test
    assert len(pool) == 1797
    assert prepared.train_indices.size + len(test) == 1797
    # the test samples are exactly the pool samples missing from train_indices
    held_out = np.setdiff1d(np.arange(1797), prepared.train_indices)
    x_test, y_test = test.take()
    x_held, y_held = pool.take(held_out)
    assert np.array_equal(x_test, x_held)
    assert np.array_equal(y_test, y_held)
    counts = np.bincount(y_test, minlength=10)
    assert 30 <= counts.min(), counts
    assert counts.max() <= 40, counts
    assert x_test.dtype == np.float32
    assert x_test.shape[1:] == (64,)
    assert 0.0 <= x_test.min()
    assert x_test.max() <= 1.0
    # the same seed gives the same split; another seed another one
    assert np.array_equal(prepare("digits", seed=3).train_indices, prepared.train_indices)
    assert not np.array_equal(prepare("digits", seed=4).train_indices, prepared.train_indices)


def test_prepare_limits_and_argument_errors() -> None:
    prepared = prepare("digits", max_train=100, max_test=50, seed=1)
    assert prepared.train_indices.size == 100
    assert len(prepared.test) == 50
    with pytest.raises(DataError, match="test_fraction"):
        prepare("digits", test_fraction=1.0)
    with pytest.raises(DataError, match="max_train"):
        prepare("digits", max_train=0)
    with pytest.raises(DataError, match="cifar10:<dir>"):
        parse_dataset_spec("mnist")
    with pytest.raises(DataError, match="needs the folder"):
        parse_dataset_spec("cifar10")


# --------------------------------------------------------------------------------------------------
# CIFAR-10 python batches


def _write_batch(
    path: Path, n: int, seed: int, *, protocol: int = 2
) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    batch = {
        b"batch_label": b"training batch 1 of 5",
        b"labels": labels,
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    return data, labels


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        _write_batch(folder / f"data_batch_{i}", 8, seed=i)
    _write_batch(folder / "test_batch", 6, seed=99)
    return tmp_path


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batch_reader_round_trips_a_generated_file(tmp_path: Path, protocol: int) -> None:
    data, labels = _write_batch(tmp_path / "data_batch_1", 5, seed=1, protocol=protocol)
    x, y = read_cifar_batch(tmp_path / "data_batch_1")
    assert x.dtype == np.uint8
    assert x.shape == (5, 3, 32, 32)
    assert np.array_equal(x.reshape(5, -1), data)
    assert y.tolist() == labels


def test_cifar_pool_and_test_split(cifar_dir: Path) -> None:
    spec = f"cifar10:{cifar_dir}"  # the parent of cifar-10-batches-py also works
    prepared = prepare(spec)
    assert len(prepared.pool) == 40
    assert prepared.train_indices.size == 40
    assert len(prepared.test) == 6
    x, _y = prepared.test.take()
    assert x.shape == (6, 3, 32, 32)
    assert x.dtype == np.float32
    raw, _ = read_cifar_batch(cifar_dir / "cifar-10-batches-py" / "test_batch")
    expected_red = (raw[:, 0].astype(np.float32) / 255 - 0.4914) / 0.2470
    np.testing.assert_allclose(x[:, 0], expected_red, rtol=1e-5, atol=1e-5)
    assert load_dataset(spec) is load_dataset(spec), "a worker loads the pool once"


def test_cifar_missing_file_is_named(tmp_path: Path) -> None:
    _write_batch(tmp_path / "data_batch_1", 2, seed=1)
    with pytest.raises(DataError, match="data_batch_2"):
        prepare(f"cifar10:{tmp_path}")


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))  # type: ignore[return-value]


def test_cifar_reader_refuses_pickles_that_construct_anything_else(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "data_batch_1"
    bad.write_bytes(pickle.dumps({b"data": _Exploit(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(DataError, match="refusing to load"):
        read_cifar_batch(bad)
    assert not marker.exists()

    evil = tmp_path / "evil"
    evil.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    with pytest.raises(DataError, match=r"refusing to load (os|posix)\.system"):
        read_cifar_batch(evil)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([1, 2, 3], "top level is list"),
        ({b"labels": [0]}, "missing"),
        ({b"data": np.zeros((1, 3072), np.float32), b"labels": [0]}, "uint8"),
        ({b"data": np.zeros((1, 100), np.uint8), b"labels": [0]}, "3072"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 images but 1 labels"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, "0..9"),
    ],
)
def test_cifar_reader_rejects_malformed_batches(
    tmp_path: Path, payload: object, message: str
) -> None:
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DataError, match=message):
        read_cifar_batch(path)
