"""Data sets and partitions for simulated devices.

Two data sets are built in:

* ``digits``: scikit-learn's handwritten digits (1,797 8x8 grey images, 10 classes). It ships inside
  the scikit-learn package, so it needs no download. Inputs are ``[N, 64]`` floats in ``[0, 1]``.
* ``cifar10:<dir>``: CIFAR-10 read from the standard python-pickle batches a user has downloaded
  (``data_batch_1`` .. ``data_batch_5`` and ``test_batch``; ``<dir>`` may also be their parent, the
  folder holding ``cifar-10-batches-py``). Inputs are ``[N, 3, 32, 32]``, per-channel standardised.
  The files are pickles, so they are read with an unpickler that can construct nothing but the
  numpy arrays and byte strings those files hold (:func:`read_cifar_batch`).

A data set is named by a short *spec* string (``"digits"``, ``"cifar10:/data/cifar"``) so that it
can cross into worker processes cheaply: each worker loads it once (:func:`load_dataset`, cached)
and tasks carry only the indices of a device's samples.

Every data set has a *pool* (what devices train on: all digits, or the CIFAR-10 training batches)
and a held-out *test* set no device sees (:func:`prepare`): a stratified fraction of the digits, or
CIFAR-10's own ``test_batch``. Partitions (:func:`partition_iid`, :func:`partition_dirichlet`) split
pool indices across devices: disjoint, covering, deterministic per seed, and every device gets at
least ``min_size`` samples (one local batch).
"""

from __future__ import annotations

import functools
import io
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import attrs
import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "CIFAR10_CLASSES",
    "DataError",
    "Dataset",
    "Prepared",
    "load_dataset",
    "parse_dataset_spec",
    "partition",
    "partition_dirichlet",
    "partition_iid",
    "prepare",
    "read_cifar_batch",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
# Per-channel statistics of the CIFAR-10 training set (the values torchvision examples use).
_CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32).reshape(1, 3, 1, 1)
_CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32).reshape(1, 3, 1, 1)
_CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_FILE = "test_batch"


class DataError(ValueError):
    """A data set cannot be read or split as asked; the message names the file or argument."""


@attrs.frozen(eq=False)
class Dataset:
    """Labelled samples kept compactly (CIFAR-10 stays ``uint8``: 150 MB instead of 600 MB).

    Args:
        name: ``"digits"`` or ``"cifar10"``.
        x: raw inputs ``[N, ...]`` (any numeric dtype).
        y: int64 labels ``[N]`` in ``0 .. num_classes - 1``.
        num_classes: number of classes.
        scale: inputs are ``x * scale``, then standardised with ``mean`` / ``std`` when given.
        mean, std: broadcastable float32 arrays (per channel), or ``None``.
    """

    name: str
    x: npt.NDArray[Any]
    y: IntArray
    num_classes: int
    scale: float = 1.0
    mean: FloatArray | None = None
    std: FloatArray | None = None

    def __attrs_post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0] or self.y.ndim != 1:
            raise DataError(
                f"{self.name}: {self.x.shape[0]} inputs but labels of shape {self.y.shape}"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one input sample (without the batch dimension)."""
        return tuple(int(d) for d in self.x.shape[1:])

    def take(self, indices: npt.ArrayLike | None = None) -> tuple[FloatArray, IntArray]:
        """Model-ready ``(x float32, y int64)`` for ``indices`` (all samples when ``None``)."""
        if indices is None:
            x_raw, y = self.x, self.y
        else:
            idx = np.asarray(indices, dtype=np.int64)
            x_raw, y = self.x[idx], self.y[idx]
        x = x_raw.astype(np.float32)
        if self.scale != 1.0:
            x *= np.float32(self.scale)
        if self.mean is not None:
            x -= self.mean
        if self.std is not None:
            x /= self.std
        return np.ascontiguousarray(x), np.ascontiguousarray(y, dtype=np.int64)

    def subset(self, indices: npt.ArrayLike) -> Dataset:
        """The samples at ``indices``, still raw."""
        idx = np.asarray(indices, dtype=np.int64)
        return attrs.evolve(self, x=self.x[idx], y=self.y[idx])


@attrs.frozen(eq=False)
class Prepared:
    """A data set ready for a simulation: the pool devices train on and the held-out test set.

    ``train_indices`` index ``pool`` (never the test set); partitions split them across devices.
    """

    spec: str
    pool: Dataset
    train_indices: IntArray
    test: Dataset


# --------------------------------------------------------------------------------------------------
# Specs and loading


def parse_dataset_spec(spec: str) -> tuple[Literal["digits", "cifar10"], Path | None]:
    """Split a spec string into the data set kind and its directory.

    Raises:
        DataError: unknown kind, or a CIFAR-10 spec without a directory.
    """
    if not isinstance(spec, str) or not spec:
        raise DataError(f"dataset must be 'digits' or 'cifar10:<dir>', got {spec!r}")
    kind, _, rest = spec.partition(":")
    if kind == "digits" and not rest:
        return "digits", None
    if kind == "cifar10":
        if not rest:
            raise DataError(
                "dataset 'cifar10' needs the folder of the python batches: 'cifar10:<dir>'"
            )
        return "cifar10", Path(rest)
    raise DataError(f"dataset must be 'digits' or 'cifar10:<dir>', got {spec!r}")


@functools.lru_cache(maxsize=4)
def load_dataset(spec: str) -> Dataset:
    """The training pool named by ``spec``, loaded once per process (cached).

    ``digits``: all 1,797 samples (:func:`prepare` holds some out). ``cifar10:<dir>``: the 50,000
    samples of the five training batches (the test batch is separate: :func:`prepare`).
    """
    kind, folder = parse_dataset_spec(spec)
    if kind == "digits":
        return _load_digits()
    assert folder is not None
    return _load_cifar(_cifar_folder(folder), _CIFAR_TRAIN_FILES)


def prepare(
    spec: str,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    max_train: int | None = None,
    max_test: int | None = None,
) -> Prepared:
    """Load ``spec`` and fix its held-out test set.

    Args:
        spec: ``"digits"`` or ``"cifar10:<dir>"``.
        test_fraction: digits only: the stratified fraction held out for testing (CIFAR-10 uses
            its own ``test_batch``).
        seed: seeds the digits hold-out and the ``max_train`` / ``max_test`` subsampling.
        max_train: use at most this many training samples (a random, stratified-by-chance subset).
        max_test: keep at most this many test samples.

    Raises:
        DataError: an argument out of range or an unreadable file (named in the message).
    """
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    for name, value in (("max_train", max_train), ("max_test", max_test)):
        if value is not None and (isinstance(value, bool) or value < 1):
            raise DataError(f"{name} must be a positive integer or None, got {value!r}")
    kind, folder = parse_dataset_spec(spec)
    pool = load_dataset(spec)
    rng = np.random.default_rng(seed)
    if kind == "digits":
        test_idx = _stratified_holdout(pool.y, test_fraction, rng)
        mask = np.ones(len(pool), dtype=bool)
        mask[test_idx] = False
        train_idx = np.flatnonzero(mask).astype(np.int64)
        test = pool.subset(test_idx)
    else:
        assert folder is not None
        train_idx = np.arange(len(pool), dtype=np.int64)
        test = _load_cifar(_cifar_folder(folder), (_CIFAR_TEST_FILE,))
    if max_train is not None and max_train < train_idx.size:
        train_idx = np.sort(rng.choice(train_idx, size=max_train, replace=False))
    if max_test is not None and max_test < len(test):
        test = test.subset(np.sort(rng.choice(len(test), size=max_test, replace=False)))
    return Prepared(spec=spec, pool=pool, train_indices=train_idx, test=test)


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float32)  # [1797, 64], values 0..16
    y = np.asarray(bunch.target, dtype=np.int64)
    return Dataset(name="digits", x=x, y=y, num_classes=10, scale=1.0 / 16.0)


def _stratified_holdout(labels: IntArray, fraction: float, rng: np.random.Generator) -> IntArray:
    picked: list[IntArray] = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n = round(fraction * int(members.size))
        picked.append(rng.choice(members, size=n, replace=False).astype(np.int64))
    return np.sort(np.concatenate(picked))


# --------------------------------------------------------------------------------------------------
# CIFAR-10 python batches


class _CifarUnpickler(pickle.Unpickler):
    """Resolves only the globals that numpy arrays and byte strings in CIFAR-10 batches need.

    The official files are Python 2 pickles of a dict whose ``b"data"`` is a numpy array (pickled
    through ``numpy.core.multiarray._reconstruct``); files re-written by Python 3 may also use
    ``_codecs.encode`` (bytes under protocol 2) or ``numpy._core.numeric._frombuffer`` (protocol 5).
    Everything else (``os.system``, ``builtins.eval``, any class) is refused.
    """

    _ALLOWED: frozenset[tuple[str, str]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR-10 batch holds only numpy arrays, "
                "lists and byte strings"
            )
        if name == "_reconstruct":
            from numpy._core.multiarray import _reconstruct

            return _reconstruct
        if name == "_frombuffer":
            from numpy._core.numeric import _frombuffer  # type: ignore[attr-defined]

            return _frombuffer
        if name == "encode":
            import codecs

            return codecs.encode
        return getattr(np, name)


def read_cifar_batch(path: str | Path) -> tuple[npt.NDArray[np.uint8], IntArray]:
    """Read one CIFAR-10 python batch file: ``(x uint8 [N, 3, 32, 32], y int64 [N])``.

    Raises:
        DataError: the file is missing, is not a CIFAR-10 batch, or tries to construct anything
            but numpy arrays (the message names the file).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read CIFAR-10 batch: {exc.strerror or exc}") from None
    try:
        obj = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: not a CIFAR-10 python batch: {exc}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a CIFAR-10 python batch: top level is {type(obj).__name__}")
    data = _get_key(obj, "data")
    labels = _get_key(obj, "labels")
    if data is None or labels is None:
        raise DataError(f"{path}: not a CIFAR-10 python batch: missing b'data' or b'labels'")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataError(f"{path}: b'data' must be a uint8 array [N, 3072]")
    if data.shape[1] != 3072:
        raise DataError(f"{path}: b'data' rows have {data.shape[1]} values, expected 3072")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: b'labels' must be a list of integers") from None
    if y.shape != (data.shape[0],):
        raise DataError(f"{path}: {data.shape[0]} images but {y.size} labels")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{path}: labels must be in 0..9")
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32)), y


def _get_key(obj: dict[Any, Any], key: str) -> Any:
    if key.encode() in obj:
        return obj[key.encode()]
    return obj.get(key)


def _cifar_folder(folder: Path) -> Path:
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    if not folder.is_dir():
        raise DataError(f"CIFAR-10 folder {folder} does not exist")
    return folder


def _load_cifar(folder: Path, files: Sequence[str]) -> Dataset:
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise DataError(f"CIFAR-10 folder {folder} lacks {', '.join(missing)}")
    parts = [read_cifar_batch(folder / f) for f in files]
    x = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    y = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return Dataset(
        name="cifar10",
        x=x,
        y=y,
        num_classes=10,
        scale=1.0 / 255.0,
        mean=_CIFAR_MEAN,
        std=_CIFAR_STD,
    )


# --------------------------------------------------------------------------------------------------
# Partitions


def _check_partition_args(num_samples: int, num_devices: int, min_size: int) -> None:
    if isinstance(num_devices, bool) or not isinstance(num_devices, int) or num_devices < 1:
        raise DataError(f"num_devices must be a positive integer, got {num_devices!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 1:
        raise DataError(f"min_size must be a positive integer, got {min_size!r}")
    if num_devices * min_size > num_samples:
        raise DataError(
            f"num_devices={num_devices} devices with at least min_size={min_size} samples each "
            f"need {num_devices * min_size} training samples; the data set has {num_samples}"
        )


def partition_iid(
    indices: npt.ArrayLike, num_devices: int, *, seed: int, min_size: int = 1
) -> list[IntArray]:
    """Shuffle ``indices`` and deal them into ``num_devices`` parts of near-equal size.

    Returns one sorted int64 array per device: disjoint, together exactly ``indices``.

    Raises:
        DataError: fewer than ``num_devices * min_size`` indices.
    """
    idx = np.asarray(indices, dtype=np.int64)
    _check_partition_args(idx.size, num_devices, min_size)
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(idx)
    return [np.sort(part) for part in np.array_split(shuffled, num_devices)]


def partition_dirichlet(
    indices: npt.ArrayLike,
    labels: npt.ArrayLike,
    num_devices: int,
    *,
    alpha: float,
    seed: int,
    min_size: int = 1,
) -> list[IntArray]:
    """Non-IID split: each class's samples are divided among devices in Dirichlet(alpha) shares.

    Small ``alpha`` (e.g. 0.1) gives each device few classes; large ``alpha`` approaches IID. A
    device left with fewer than ``min_size`` samples is topped up with samples taken from the
    largest devices, so every device can train at least one batch.

    Args:
        indices: pool indices to split.
        labels: the label of each entry of ``indices`` (same length).
        num_devices: parts to make.
        alpha: Dirichlet concentration, > 0.
        seed: makes the split reproducible.
        min_size: minimum samples per device.

    Returns:
        One sorted int64 array per device: disjoint, together exactly ``indices``.
    """
    idx = np.asarray(indices, dtype=np.int64)
    lab = np.asarray(labels)
    if lab.shape != idx.shape:
        raise DataError(f"labels must match indices: {lab.shape} vs {idx.shape}")
    if not (isinstance(alpha, int | float) and not isinstance(alpha, bool)) or not alpha > 0:
        raise DataError(f"alpha must be a positive number, got {alpha!r}")
    _check_partition_args(idx.size, num_devices, min_size)
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(num_devices)]
    for c in np.unique(lab):
        members = rng.permutation(idx[lab == c])
        shares = rng.dirichlet(np.full(num_devices, float(alpha)))
        cuts = (np.cumsum(shares)[:-1] * members.size).astype(np.int64)
        for device, chunk in enumerate(np.split(members, cuts)):
            parts[device].extend(chunk.tolist())
    # Top up devices below min_size from the currently largest ones (deterministic given rng).
    sizes = np.array([len(p) for p in parts])
    for needy in np.flatnonzero(sizes < min_size).tolist():
        while len(parts[needy]) < min_size:
            donor = int(np.argmax([len(p) for p in parts]))
            take = int(rng.integers(len(parts[donor])))
            parts[needy].append(parts[donor].pop(take))
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def partition(
    prepared: Prepared,
    num_devices: int,
    *,
    scheme: Literal["iid", "dirichlet"] = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    min_size: int = 1,
) -> list[IntArray]:
    """Split ``prepared.train_indices`` across ``num_devices`` (indices into ``prepared.pool``)."""
    if scheme == "iid":
        return partition_iid(prepared.train_indices, num_devices, seed=seed, min_size=min_size)
    if scheme == "dirichlet":
        labels = prepared.pool.y[prepared.train_indices]
        return partition_dirichlet(
            prepared.train_indices,
            labels,
            num_devices,
            alpha=alpha,
            seed=seed,
            min_size=min_size,
        )
    raise DataError(f"partition scheme must be 'iid' or 'dirichlet', got {scheme!r}")
