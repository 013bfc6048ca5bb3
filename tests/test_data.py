"""mpcourse.data: generated, bundled and on-disk data, all deterministic and offline."""

import numpy as np
import pytest
import torch

from mpcourse.data import (
    CIFAR10_TEST_FILES,
    CIFAR10_TRAIN_FILES,
    cifar10,
    digits,
    make_loader,
    synthetic_images,
    write_cifar10_binary,
)


def test_synthetic_images_shape_dtype_balance_and_determinism():
    ds = synthetic_images(100, seed=0)
    x, y = ds.tensors
    assert x.shape == (100, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.bincount(y, minlength=10).tolist() == [10] * 10
    x2, y2 = synthetic_images(100, seed=0).tensors
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = synthetic_images(100, seed=1).tensors
    assert not torch.equal(x, x3)
    assert synthetic_images(30, num_classes=3).tensors[1].max() == 2


def test_synthetic_images_are_learnable_and_share_classes_across_seeds():
    # nearest class mean, fitted on seed 0, classifies a fresh seed-1 sample well
    x, y = synthetic_images(1000, seed=0).tensors
    xt, yt = synthetic_images(500, seed=1).tensors
    means = torch.stack([x[y == c].mean(0).flatten() for c in range(10)])
    pred = torch.cdist(xt.flatten(1), means).argmin(1)
    assert (pred == yt).float().mean() > 0.9


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n": 0}, "n must be an int >= 1"),
        ({"num_classes": 1}, "num_classes must be an int >= 2"),
        ({"seed": 1.5}, "seed must be an int"),
    ],
)
def test_synthetic_images_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic_images(**kwargs)


def test_digits_split_standardization_and_shapes():
    train, test = digits("train"), digits("test")
    assert len(train) == 1438 and len(test) == 359
    x, y = train.tensors
    assert x.shape == (1438, 64) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(x.mean().item()) < 1e-5 and abs(x.std().item() - 1) < 1e-5
    assert set(y.tolist()) == set(range(10))
    # the split is a seeded permutation of the 1797 images, standardized with the train stats
    from sklearn.datasets import load_digits

    raw = torch.from_numpy(load_digits().data.astype(np.float32))
    order = torch.randperm(1797, generator=torch.Generator().manual_seed(0))
    tr, te = raw[order[:1438]], raw[order[1438:]]
    assert torch.allclose(x, (tr - tr.mean()) / tr.std())
    assert torch.allclose(test.tensors[0], (te - tr.mean()) / tr.std())
    assert torch.equal(digits("train").tensors[0], x)  # deterministic
    assert not torch.equal(digits("train", seed=1).tensors[1], y)


def test_digits_upsampled_for_the_cnn():
    x, _ = digits("test", image_size=32).tensors
    assert x.shape == (359, 3, 32, 32)
    assert torch.equal(x[:, 0], x[:, 2])


def test_digits_bad_arguments():
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        digits("val")
    with pytest.raises(ValueError, match="image_size must be an int >= 1"):
        digits(image_size=0)


def _write_fake_cifar(folder, n_per_file=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in CIFAR10_TRAIN_FILES + CIFAR10_TEST_FILES:
        images = torch.randint(0, 256, (n_per_file, 3, 32, 32), generator=gen, dtype=torch.uint8)
        labels = torch.randint(0, 10, (n_per_file,), generator=gen)
        write_cifar10_binary(folder / name, images, labels)
        written[name] = (images, labels)
    return written


def test_cifar10_reads_the_binary_format(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    written = _write_fake_cifar(folder)
    assert (folder / "test_batch.bin").stat().st_size == 3 * 3073
    train = cifar10(folder, "train", normalize=False)
    images = torch.cat([written[n][0] for n in CIFAR10_TRAIN_FILES]).float() / 255
    labels = torch.cat([written[n][1] for n in CIFAR10_TRAIN_FILES])
    assert torch.equal(train.tensors[0], images) and torch.equal(train.tensors[1], labels)
    test = cifar10(tmp_path, "test")  # the parent folder works too
    raw = written["test_batch.bin"][0].float() / 255
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    assert torch.allclose(test.tensors[0], (raw - mean) / std)
    assert test.tensors[0].shape == (3, 3, 32, 32) and test.tensors[1].dtype == torch.int64


def test_cifar10_channel_layout_is_planar_rgb(tmp_path):
    # one record written byte by byte: label 7, then 1024 red, 1024 green, 1024 blue bytes
    record = bytes([7]) + bytes([10]) * 1024 + bytes([20]) * 1024 + bytes([30]) * 1024
    (tmp_path / "test_batch.bin").write_bytes(record)
    x, y = cifar10(tmp_path, "test", normalize=False).tensors
    assert y.tolist() == [7]
    assert [round(x[0, c].mean().item() * 255) for c in range(3)] == [10, 20, 30]


def test_cifar10_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist. Expected a folder holding"):
        cifar10(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="data_batch_1.bin.*not found.*binary release"):
        cifar10(tmp_path, "train")
    (tmp_path / "test_batch.bin").write_bytes(b"\x00" * 3000)
    with pytest.raises(ValueError, match="not a positive multiple of 3073"):
        cifar10(tmp_path, "test")
    (tmp_path / "test_batch.bin").write_bytes(bytes([42]) + b"\x00" * 3072)
    with pytest.raises(ValueError, match="label 42, labels must be 0..9"):
        cifar10(tmp_path, "test")
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        cifar10(tmp_path, "all")


def test_write_cifar10_binary_rejects_bad_input(tmp_path):
    good = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8 tensor of shape"):
        write_cifar10_binary(tmp_path / "a.bin", good.float(), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels must have shape"):
        write_cifar10_binary(tmp_path / "a.bin", good, torch.tensor([0]))
    with pytest.raises(ValueError, match="labels must be in 0..9"):
        write_cifar10_binary(tmp_path / "a.bin", good, torch.tensor([0, 10]))


def test_make_loader_is_deterministic():
    ds = synthetic_images(100)

    def order(seed):
        return torch.cat([y for _, y in make_loader(ds, 32, seed=seed)])

    assert torch.equal(order(0), order(0)) and not torch.equal(order(0), order(1))
    sizes = [len(y) for _, y in make_loader(ds, 32)]
    assert sizes == [32, 32, 32, 4]
    unshuffled = torch.cat([y for _, y in make_loader(ds, 32, shuffle=False)])
    assert torch.equal(unshuffled, ds.tensors[1])


def test_make_loader_bad_input():
    with pytest.raises(TypeError, match="dataset must be a torch Dataset, got list"):
        make_loader([1, 2, 3])
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        make_loader(synthetic_images(10), 0)
