"""Data for the course: generated in memory, shipped in a package, or read from disk.

* :func:`synthetic_images` - a deterministic, learnable image set in the seed's
  shape (3x32x32, 10 classes), made in memory from a seed: no files at all.
* :func:`digits` - scikit-learn's bundled 8x8 handwritten digits (1,797 real
  images installed with scikit-learn: nothing is downloaded), standardized,
  split 80/20 deterministically; flat or upsampled to 3x32x32.
* :func:`cifar10` - CIFAR-10 read from its *binary* release in a local folder,
  if you have it. It never downloads and never unpickles (the Python release
  is a pickle; loading pickles from the internet can run arbitrary code).
* :func:`make_loader` - a DataLoader with a seeded shuffling order.

Taught in course/03_training_in_pure_fp16.ipynb.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .validate import int_at_least

__all__ = [
    "synthetic_images",
    "digits",
    "cifar10",
    "write_cifar10_binary",
    "make_loader",
    "CIFAR10_CLASSES",
    "CIFAR10_TRAIN_FILES",
    "CIFAR10_TEST_FILES",
]

_PROTOTYPE_SEED = 20180215  # fixes what each synthetic class looks like, for every `seed`


def synthetic_images(n: int = 2048, *, seed: int = 0, num_classes: int = 10) -> TensorDataset:
    """A learnable image classification set of shape ``(n, 3, 32, 32)``, made from a seed.

    Each class ``c`` has a smooth prototype image ``P_c`` (random 3x4x4 values
    upsampled bilinearly to 3x32x32). Sample ``i`` with label ``y_i`` is

        ``x_i = a_i * P_{y_i} + 0.8 * noise_i``,  ``a_i ~ U(0.5, 1.5)``,  ``noise_i ~ N(0, 1)``

    so a class is recognisable but not trivially so. Labels are balanced
    (``i mod num_classes``, shuffled). The prototypes depend only on
    ``num_classes``; ``seed`` draws the samples, so ``synthetic_images(seed=1)``
    is a fresh test set for a model trained on ``seed=0``. Same arguments, same
    bytes, on every machine.

    Returns a ``TensorDataset`` of float32 images and int64 labels.

    Taught in course/03_training_in_pure_fp16.ipynb.
    """
    int_at_least(n, "n", 1)
    int_at_least(num_classes, "num_classes", 2)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    proto_gen = torch.Generator().manual_seed(_PROTOTYPE_SEED + num_classes)
    coarse = torch.randn(num_classes, 3, 4, 4, generator=proto_gen)
    prototypes = F.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
    prototypes = prototypes / prototypes.flatten(1).std(dim=1).view(-1, 1, 1, 1)

    gen = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
    amplitude = 0.5 + torch.rand(n, generator=gen).view(n, 1, 1, 1)
    noise = torch.randn(n, 3, 32, 32, generator=gen)
    images = amplitude * prototypes[labels] + 0.8 * noise
    return TensorDataset(images.float().contiguous(), labels.long())


def digits(split: str = "train", *, image_size: int | None = None, seed: int = 0) -> TensorDataset:
    """scikit-learn's bundled handwritten digits (1,797 real 8x8 images, 10 classes).

    Pixels (0..16) are standardized with the *training* split's mean and
    standard deviation, ``x' = (x - mean) / std``, so both splits use the same
    transform. The split is a seeded permutation: the first 1,438 images
    (80%) are ``"train"``, the other 359 ``"test"``.

    ``image_size=None`` gives flat 64-feature rows (for :class:`~mpcourse.models.MLP`);
    ``image_size=32`` gives ``(N, 3, 32, 32)`` images (bilinear upsampling, the
    grey channel repeated 3 times) for :class:`~mpcourse.models.SimpleModel`.

    Taught in course/03_training_in_pure_fp16.ipynb.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if image_size is not None:
        int_at_least(image_size, "image_size", 1)
    from sklearn.datasets import load_digits  # bundled with scikit-learn, read from disk

    bunch = load_digits()
    x = torch.from_numpy(bunch.data.astype(np.float32))  # (1797, 64), values 0..16
    y = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_train = round(0.8 * len(y))
    train_idx, test_idx = order[:n_train], order[n_train:]
    mean, std = x[train_idx].mean(), x[train_idx].std()
    idx = train_idx if split == "train" else test_idx
    x = (x[idx] - mean) / std
    if image_size is not None:
        x = x.view(-1, 1, 8, 8)
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
        x = x.expand(-1, 3, -1, -1)
    return TensorDataset(x.contiguous(), y[idx].contiguous())


CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch.bin",)
_RECORD = 1 + 3 * 32 * 32  # one label byte, then 1024 R, 1024 G, 1024 B bytes (row-major)
_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2470, 0.2435, 0.2616)


def _cifar_folder(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"CIFAR-10 folder {str(root)!r} does not exist. Expected a folder holding the binary "
            f"release ({', '.join(CIFAR10_TRAIN_FILES + CIFAR10_TEST_FILES)}), e.g. the "
            "'cifar-10-batches-bin' folder of cifar-10-binary.tar.gz, or its parent."
        )
    if not (root / CIFAR10_TEST_FILES[0]).exists() and (root / "cifar-10-batches-bin").is_dir():
        root = root / "cifar-10-batches-bin"
    return root


def _read_cifar_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _RECORD != 0:
        raise ValueError(
            f"{path} is not a CIFAR-10 binary batch: its size ({raw.size} bytes) is not a positive "
            f"multiple of {_RECORD} (1 label byte + 3072 pixel bytes per image)"
        )
    records = raw.reshape(-1, _RECORD)
    labels = records[:, 0]
    if labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise ValueError(
            f"{path} is not a CIFAR-10 binary batch: record {bad} has label {int(labels[bad])}, "
            "labels must be 0..9 (is this the CIFAR-100 release?)"
        )
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def cifar10(root: str | Path, split: str = "train", *, normalize: bool = True) -> TensorDataset:
    """CIFAR-10 from the binary release in a local folder; never downloads, never unpickles.

    ``root`` is the ``cifar-10-batches-bin`` folder (or its parent). Each file
    is a sequence of 3,073-byte records: a label byte 0..9, then the red, green
    and blue 32x32 planes, row-major. ``"train"`` reads ``data_batch_1..5.bin``
    (50,000 images), ``"test"`` reads ``test_batch.bin`` (10,000).

    Images become float32 ``(N, 3, 32, 32)`` in ``[0, 1]``; with ``normalize``
    each channel is standardized with CIFAR-10's usual mean and std,
    ``x' = (x - mean_c) / std_c``. A missing folder or file, or a file of the
    wrong size, raises an error saying what was expected.

    Taught in course/03_training_in_pure_fp16.ipynb.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = _cifar_folder(root)
    names = CIFAR10_TRAIN_FILES if split == "train" else CIFAR10_TEST_FILES
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 {split} split: {', '.join(missing)} not found in {str(folder)!r}. Expected "
            f"the binary release: {', '.join(names)} (from cifar-10-binary.tar.gz; the Python "
            "pickle release is not read)."
        )
    parts = [_read_cifar_file(folder / n) for n in names]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts])).float().div_(255.0)
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]).astype(np.int64))
    if normalize:
        mean = torch.tensor(_CIFAR_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(_CIFAR_STD).view(1, 3, 1, 1)
        images = (images - mean) / std
    return TensorDataset(images, labels)


def write_cifar10_binary(path: str | Path, images: torch.Tensor, labels: torch.Tensor) -> Path:
    """Write ``uint8`` images ``(N, 3, 32, 32)`` and labels ``(N,)`` in CIFAR-10's binary format.

    The inverse of the reader for one file: used by the tests (a tiny file in
    the real format) and handy to make a small CIFAR-style set of your own.

    Taught in course/03_training_in_pure_fp16.ipynb.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or tuple(images.shape[1:]) != (3, 32, 32):
        raise ValueError(
            f"images must be a uint8 tensor of shape (N, 3, 32, 32), got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    if labels.dim() != 1 or len(labels) != len(images):
        raise ValueError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise ValueError("labels must be in 0..9")
    records = torch.cat([labels.to(torch.uint8).view(-1, 1), images.reshape(len(images), -1)], 1)
    path = Path(path)
    path.write_bytes(records.numpy().tobytes())
    return path


def make_loader(
    dataset: Dataset, batch_size: int = 64, *, shuffle: bool = True, seed: int = 0
) -> DataLoader:
    """A DataLoader whose order depends only on ``seed``: same batches on every run.

    Shuffling uses its own ``torch.Generator`` seeded with ``seed`` (the global
    RNG is untouched); ``num_workers=0`` keeps it simple and reproducible;
    the last, smaller batch is kept.

    Taught in course/03_training_in_pure_fp16.ipynb.
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a torch Dataset, got {type(dataset).__name__}")
    int_at_least(batch_size, "batch_size", 1)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, num_workers=0)
