"""Long-tailed datasets for the experiment runner: digits-LT, ``.npz`` files, image folders.

Every loader returns a :class:`LongTailedData`: uint8 or float images in NCHW float32
``[0, 1]``, a long-tailed training split (pre-training), a balanced probe split (the
linear probe and kNN memory) and a balanced test split. Arrays are validated here, once,
with one-line :class:`DataError` messages the command line prints as they are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = [
    "OVERLAPS",
    "SPREAD_ORDERS",
    "DataError",
    "LongTailedData",
    "group_classes",
    "load_digits_lt",
    "load_image_folder",
    "load_npz",
    "long_tailed_counts",
    "planted_mixture",
    "resize_images",
]


class DataError(ValueError):
    """Input data that cannot be used: missing file, wrong shapes, labels out of range."""


@dataclass
class LongTailedData:
    """Arrays of one experiment, images as float32 ``(N, C, H, W)`` in ``[0, 1]``.

    Attributes:
        name: short description printed in the report.
        x_train, y_train: long-tailed pre-training split, ``(N, C, H, W)`` and ``(N,)``.
        x_probe, y_probe: split the linear probe is fitted on (balanced when available).
        x_test, y_test: balanced test split.
        num_classes: ``C``; labels lie in ``[0, C)``.
        groups: class indices of the Many / Medium / Few groups.
        probe_note: how the probe split was made (for the report).
        class_names: one name per class (the report's axis labels).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_probe: np.ndarray
    y_probe: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    groups: dict[str, list[int]]
    probe_note: str
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.class_names:
            self.class_names = tuple(str(label) for label in range(self.num_classes))
        if len(self.class_names) != self.num_classes:
            raise DataError(f"{len(self.class_names)} class names given for {self.num_classes} classes")

    @property
    def class_counts(self) -> np.ndarray:
        """``(C,)`` training count per class."""
        return np.bincount(self.y_train, minlength=self.num_classes)


def long_tailed_counts(max_count: int, num_classes: int, ratio: float) -> list[int]:
    """The exponential profile ``n_i = floor(n_max * ratio ** (-i / (C - 1)))``.

    Example:
        >>> long_tailed_counts(5000, 10, 100.0)
        [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    """
    if num_classes == 1:
        return [max_count]
    return [int(max_count * ratio ** (-i / (num_classes - 1))) for i in range(num_classes)]


def group_classes(class_counts: np.ndarray) -> dict[str, list[int]]:
    """Many / Medium / Few: classes ranked by training count, split into thirds.

    The Few group takes the remainder (CIFAR-10-LT: 3 / 3 / 4 classes, as in SDCLR/BCL).
    Ties in count keep the lower class index first.

    Example:
        >>> group_classes(np.array([50, 40, 30, 20, 10, 9, 8, 7, 6, 5]))
        {'many': [0, 1, 2], 'medium': [3, 4, 5], 'few': [6, 7, 8, 9]}
    """
    order = [int(c) for c in np.argsort(-np.asarray(class_counts), kind="stable")]
    third = len(order) // 3
    if third == 0:
        raise DataError(f"need at least 3 classes for Many/Medium/Few, got {len(order)}")
    return {"many": order[:third], "medium": order[third : 2 * third], "few": order[2 * third :]}


def load_digits_lt(
    ratio: float = 10.0, test_per_class: int = 40, max_count: int = 130, seed: int = 0
) -> LongTailedData:
    """scikit-learn's handwritten digits (8x8, 1,797 images) made long-tailed.

    Per class, ``test_per_class`` images go to the balanced test split; of the rest,
    ``max_count`` per class form the balanced probe split, and its first ``n_i``
    (exponential profile, class 0 the most frequent) form the long-tailed training split,
    so the training split is a subset of the probe split (as with CIFAR's 100-shot file).

    Example:
        >>> data = load_digits_lt(ratio=10.0)
        >>> data.class_counts.tolist()
        [130, 100, 77, 60, 46, 36, 28, 21, 16, 13]
        >>> data.x_test.shape, data.x_probe.shape
        ((400, 1, 8, 8), (1300, 1, 8, 8))
    """
    from sklearn.datasets import load_digits

    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 1 <= ratio <= max_count:
        raise DataError(f"ratio must be a number in [1, {max_count}] (every class keeps an image), got {ratio!r}")
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    labels = digits.target.astype(np.int64)
    num_classes = 10
    counts = long_tailed_counts(max_count, num_classes, ratio)
    generator = np.random.default_rng(seed)
    train, probe, test = [], [], []
    for label in range(num_classes):
        members = generator.permutation(np.flatnonzero(labels == label))
        if members.size < test_per_class + max_count:
            raise DataError(
                f"digit {label} has {members.size} images, fewer than "
                f"test_per_class + max_count = {test_per_class + max_count}"
            )
        test.append(members[:test_per_class])
        pool = members[test_per_class : test_per_class + max_count]
        probe.append(pool)
        train.append(pool[: counts[label]])
    train_index, probe_index, test_index = (np.concatenate(part) for part in (train, probe, test))
    y_train = labels[train_index]
    return LongTailedData(
        name=f"digits-LT (ratio {ratio:g}, {train_index.size} train images)",
        class_names=tuple(f"digit {label}" for label in range(num_classes)),
        x_train=images[train_index],
        y_train=y_train,
        x_probe=images[probe_index],
        y_probe=labels[probe_index],
        x_test=images[test_index],
        y_test=labels[test_index],
        num_classes=num_classes,
        groups=group_classes(np.bincount(y_train, minlength=num_classes)),
        probe_note=f"balanced, {max_count} per class (contains the training split)",
    )


def _to_nchw(name: str, images: np.ndarray) -> np.ndarray:
    """uint8/float ``(N, H, W, C)`` or ``(N, H, W)`` images -> float32 ``(N, C, H, W)`` in [0, 1]."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(
            f"{name} must have shape (N, H, W, 3), (N, H, W, 1) or (N, H, W), "
            f"got {tuple(images.shape)}"
        )
    if images.shape[0] == 0:
        raise DataError(f"{name} is empty")
    if images.dtype == np.uint8:
        scaled = images.astype(np.float32) / 255.0
    elif np.issubdtype(images.dtype, np.floating):
        scaled = images.astype(np.float32)
        if not np.isfinite(scaled).all() or scaled.min() < 0 or scaled.max() > 1:
            raise DataError(f"{name}: float images must be finite and lie in [0, 1]")
    else:
        raise DataError(f"{name} must be uint8 or float images, got dtype {images.dtype}")
    return np.ascontiguousarray(scaled.transpose(0, 3, 1, 2))


def _check_labels(name: str, labels: np.ndarray, count: int, num_classes: int) -> np.ndarray:
    if labels.ndim != 1 or labels.shape[0] != count:
        raise DataError(f"{name} must have shape ({count},), got {tuple(labels.shape)}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{name} must hold integer labels, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(
            f"{name} must lie in [0, {num_classes}), got values in [{labels.min()}, {labels.max()}]"
        )
    return labels.astype(np.int64)


def _read_npz(path: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    if not os.path.isfile(path):
        raise DataError(f"no such file: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in keys if key not in archive.files]
            if missing:
                raise DataError(f"{path} lacks the array(s) {missing}; it has {archive.files}")
            return {key: archive[key] for key in keys}
    except DataError:
        raise
    except Exception as error:  # np.load raises several types for a corrupt file
        raise DataError(f"cannot read {path} as .npz: {error}") from error


def _from_arrays(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    probe: Optional[tuple[np.ndarray, np.ndarray]],
    num_classes: Optional[int],
    class_names: tuple[str, ...] = (),
) -> LongTailedData:
    """Validate raw arrays and assemble a :class:`LongTailedData`."""
    x_train, x_test = _to_nchw("x", train[0]), _to_nchw("x_test", test[0])
    if x_test.shape[1:] != x_train.shape[1:]:
        raise DataError(
            f"x_test images have shape {x_test.shape[1:]} but x images have {x_train.shape[1:]}"
        )
    for label_name, labels in (("y", train[1]), ("y_test", test[1])):
        if not np.issubdtype(labels.dtype, np.integer) or labels.size == 0:
            raise DataError(f"{label_name} must be a non-empty array of integer labels")
    classes = num_classes if num_classes is not None else int(train[1].max()) + 1
    y_train = _check_labels("y", train[1], x_train.shape[0], classes)
    y_test = _check_labels("y_test", test[1], x_test.shape[0], classes)
    if probe is None:
        x_probe, y_probe = x_train, y_train
        probe_note = "the long-tailed training split itself (no probe file given)"
    else:
        x_probe = _to_nchw("probe x", probe[0])
        if x_probe.shape[1:] != x_train.shape[1:]:
            raise DataError(
                f"probe images have shape {x_probe.shape[1:]} but x images have {x_train.shape[1:]}"
            )
        y_probe = _check_labels("probe y", probe[1], x_probe.shape[0], classes)
        per_class = np.bincount(y_probe, minlength=classes)
        probe_note = f"probe file, {per_class.min()}-{per_class.max()} per class"
    counts = np.bincount(y_train, minlength=classes)
    if (counts == 0).any():
        raise DataError(f"classes {np.flatnonzero(counts == 0).tolist()} have no training image")
    for split, labels in (("test", y_test), ("probe", y_probe)):
        missing = np.flatnonzero(np.bincount(labels, minlength=classes) == 0)
        if missing.size:
            raise DataError(
                f"the {split} split has no image of classes {missing.tolist()}: per-class accuracies would be undefined"
            )
    return LongTailedData(
        name=name,
        x_train=x_train,
        y_train=y_train,
        x_probe=x_probe,
        y_probe=y_probe,
        x_test=x_test,
        y_test=y_test,
        num_classes=classes,
        groups=group_classes(counts),
        probe_note=probe_note,
        class_names=class_names,
    )


def load_npz(
    path: str,
    probe_path: Optional[str] = None,
    num_classes: Optional[int] = None,
    class_names: tuple[str, ...] = (),
) -> LongTailedData:
    """A long-tailed ``.npz`` with ``x, y, x_test, y_test`` (the format of ``cifar10_lt_r100.npz``).

    Images are uint8 ``(N, H, W, 3)`` (or float in ``[0, 1]``); labels integers in
    ``[0, C)``. ``probe_path`` names a balanced probe file with ``x, y`` (e.g.
    ``cifar10_probe_100shot.npz``, the 100-shot protocol); without it the probe is
    fitted on the training split.

    Args:
        path: the ``.npz`` file.
        probe_path: optional probe ``.npz``.
        num_classes: ``C``; inferred as ``max(y) + 1`` when ``None``.
        class_names: one name per class for the report (default: the class numbers).

    Raises:
        DataError: missing file or array, wrong shape or dtype, labels out of range.
    """
    arrays = _read_npz(path, ("x", "y", "x_test", "y_test"))
    probe = None
    if probe_path is not None:
        probe_arrays = _read_npz(probe_path, ("x", "y"))
        probe = (probe_arrays["x"], probe_arrays["y"])
    return _from_arrays(
        os.path.basename(path),
        (arrays["x"], arrays["y"]),
        (arrays["x_test"], arrays["y_test"]),
        probe,
        num_classes,
        tuple(class_names),
    )


def _read_image_classes(folder: str, class_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    images, labels = [], []
    for label, class_name in enumerate(class_names):
        class_folder = os.path.join(folder, class_name)
        files = sorted(os.listdir(class_folder)) if os.path.isdir(class_folder) else []
        for file_name in files:
            with Image.open(os.path.join(class_folder, file_name)) as image:
                images.append(np.asarray(image.convert("RGB")))
            labels.append(label)
    if not images:
        raise DataError(f"{folder} holds no images in the class folders {class_names}")
    shapes = {image.shape for image in images}
    if len(shapes) != 1:
        raise DataError(f"images under {folder} differ in size: {sorted(shapes)[:3]}")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def load_image_folder(path: str, probe_path: Optional[str] = None) -> LongTailedData:
    """``path/train/<class>/*.png|jpg`` (long-tailed) and ``path/test/<class>/...`` (balanced).

    Class indices follow the sorted class folder names of ``train/``. All images must
    share one size. ``probe_path`` is an optional folder of the same layout (one level,
    ``<class>/...``).
    """
    train_folder, test_folder = os.path.join(path, "train"), os.path.join(path, "test")
    for folder in (train_folder, test_folder):
        if not os.path.isdir(folder):
            raise DataError(f"image folder layout needs {folder}/<class>/<images>")
    class_names = sorted(
        entry for entry in os.listdir(train_folder) if os.path.isdir(os.path.join(train_folder, entry))
    )
    if not class_names:
        raise DataError(f"{train_folder} has no class folders")
    probe = None
    if probe_path is not None:
        if not os.path.isdir(probe_path):
            raise DataError(f"no such probe folder: {probe_path}")
        probe = _read_image_classes(probe_path, class_names)
    return _from_arrays(
        os.path.basename(os.path.normpath(path)),
        _read_image_classes(train_folder, class_names),
        _read_image_classes(test_folder, class_names),
        probe,
        len(class_names),
        tuple(class_names),
    )


def resize_images(data: LongTailedData, size: int) -> LongTailedData:
    """The same data with every image resized to ``size x size`` (antialiased bilinear).

    A compute knob for CPU budgets: 16x16 CIFAR costs a quarter of 32x32 per layer.
    """
    import dataclasses

    import torch
    import torch.nn.functional as F

    if size < 4:
        raise DataError(f"image size must be at least 4, got {size}")

    def resize(images: np.ndarray) -> np.ndarray:
        if images.shape[2:] == (size, size):
            return images
        tensor = torch.from_numpy(images)
        resized = F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return resized.clamp(0, 1).numpy()

    return dataclasses.replace(
        data,
        name=f"{data.name} at {size}x{size}",
        x_train=resize(data.x_train),
        x_probe=resize(data.x_probe),
        x_test=resize(data.x_test),
    )


OVERLAPS = {"low": 1.5, "moderate": 2.25, "high": 3.0}
"""Noise scales of :func:`planted_mixture` at ``D = 64``, named by how much the classes
overlap: with one spread for every class, the Bayes classifier (true means and priors) is
right for about 100 %, 98 % and 91 % of the samples (ratio 100). Other dimensions scale
the noise by ``(D / 64) ** 0.25``."""

SPREAD_ORDERS = ("equal", "with", "against", "independent")
"""How :func:`planted_mixture`'s per-class spread relates to class size: one spread for
all; larger classes wider; larger classes tighter; drawn independently of size."""


def planted_mixture(
    seed: int,
    overlap: str = "low",
    num_classes: int = 10,
    ratio: float = 100.0,
    max_count: int = 2000,
    dim: int = 64,
    *,
    spread: str = "equal",
    spread_ratio: float = 1.5,
    subclusters: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """A long-tailed mixture on the unit sphere whose class sizes are known.

    Class ``c`` has ``n_c`` points (exponential profile, :func:`long_tailed_counts`)
    drawn as ``normalize(m + sigma_c * g / sqrt(D))`` with standard normal ``g`` around a
    mean ``m`` of the class: its random unit mean ``mu_c``, or with ``subclusters = S >
    1`` one of ``S`` sub-means ``normalize(mu_c + 0.8 * h / sqrt(D))`` (``h`` standard
    normal; the class's points split among them by Dirichlet(2) weights), so a class
    region is several blobs. ``sigma_c = sigma * (D / 64) ** 0.25 * s_c`` with ``sigma``
    = :data:`OVERLAPS` ``[overlap]`` and spread factors ``s_c`` spaced geometrically over
    ``[spread_ratio ** -0.5, spread_ratio ** 0.5]``, assigned by ``spread``
    (:data:`SPREAD_ORDERS`): all ``1`` (``"equal"``), the widest to the largest class
    (``"with"``), the tightest to the largest class (``"against"``), or shuffled
    (``"independent"``). Density is not count on such data: a wider class is sparser
    whatever its size.

    Args:
        seed: seed of every random draw.
        overlap: a key of :data:`OVERLAPS`.
        num_classes: ``C``.
        ratio: largest over smallest class size.
        max_count: size of the largest class.
        dim: ``D``.
        spread: a name of :data:`SPREAD_ORDERS`.
        spread_ratio: widest over tightest class spread, ``>= 1``.
        subclusters: blobs per class, ``>= 1``.

    Returns:
        ``(points, labels)``: ``(N, D)`` float32 unit rows, shuffled, and ``(N,)`` int64.

    Example:
        >>> points, labels = planted_mixture(0, "moderate", max_count=100)
        >>> points.shape, np.bincount(labels).tolist()
        ((242, 64), [100, 59, 35, 21, 12, 7, 4, 2, 1, 1])
        >>> planted_mixture(0, spread="against", subclusters=3, max_count=100)[0].shape
        (242, 64)
    """
    if overlap not in OVERLAPS:
        raise ValueError(f"overlap must be one of {sorted(OVERLAPS)}, got {overlap!r}")
    if spread not in SPREAD_ORDERS:
        raise ValueError(f"spread must be one of {list(SPREAD_ORDERS)}, got {spread!r}")
    if not spread_ratio >= 1.0:
        raise ValueError(f"spread_ratio must be >= 1, got {spread_ratio!r}")
    if isinstance(subclusters, bool) or not isinstance(subclusters, int) or subclusters < 1:
        raise ValueError(f"subclusters must be an integer >= 1, got {subclusters!r}")
    generator = np.random.default_rng(seed)
    counts = long_tailed_counts(max_count, num_classes, ratio)
    means = generator.standard_normal((num_classes, dim))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    labels = np.repeat(np.arange(num_classes), counts)
    factors = np.ones(num_classes)
    if spread != "equal" and num_classes > 1:
        # descending: class 0, the largest, gets the widest spread
        factors = spread_ratio ** np.linspace(0.5, -0.5, num_classes)
        factors = {"with": factors, "against": factors[::-1], "independent": generator.permutation(factors)}[spread]
    centers = means[labels]
    if subclusters > 1:
        offsets = means[:, None, :] + 0.8 * generator.standard_normal((num_classes, subclusters, dim)) / np.sqrt(dim)
        offsets /= np.linalg.norm(offsets, axis=2, keepdims=True)
        blob = np.concatenate(
            [generator.choice(subclusters, count, p=generator.dirichlet(np.full(subclusters, 2.0))) for count in counts]
        )
        centers = offsets[labels, blob]
    sigma = OVERLAPS[overlap] * (dim / 64) ** 0.25 * factors[labels, None]
    points = centers + sigma * generator.standard_normal((labels.size, dim)) / np.sqrt(dim)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    order = generator.permutation(labels.size)
    return points[order].astype(np.float32), labels[order].astype(np.int64)
