"""Datasets: real Fashion-MNIST files, CIFAR-10 binaries written here, corrupt files, synthetic."""
from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluators.datasets import (CIFAR10_TEST, CIFAR10_TRAIN, SYSTEM_FASHION_MNIST, DatasetError,
                                 load_dataset, make_synthetic, read_cifar_bin, read_idx)

# .ci/setup installs Debian's dataset-fashion-mnist (and fails when it cannot): the real files are
# a requirement of the suite, not an excuse to skip
FMNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte")


@pytest.fixture(scope="module")
def fmnist():
    missing = [n for n in FMNIST_FILES if not (SYSTEM_FASHION_MNIST / f"{n}.gz").is_file()]
    assert not missing, f"{missing} not in {SYSTEM_FASHION_MNIST}: run .ci/setup (apt-get install dataset-fashion-mnist)"
    return load_dataset("fashion-mnist", download=False)


def test_fashion_mnist_real_files(fmnist):
    ds = fmnist
    assert len(ds.train_y) + len(ds.val_y) == 60000
    assert len(ds.val_y) == 6000
    assert len(ds.test_y) == 10000
    assert ds.train_x.shape[1:] == (1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    for y in (ds.train_y, ds.val_y, ds.test_y):
        assert set(y.unique().tolist()) == set(range(10))
    assert (ds.in_channels, ds.image_size, ds.num_classes) == (1, 28, 10)
    # the test split is exactly the t10k files; the first t10k label is 9 (ankle boot)
    assert ds.test_y[0].item() == 9
    # balanced classes: 6000 per class across train + val
    counts = torch.bincount(torch.cat([ds.train_y, ds.val_y]), minlength=10)
    assert counts.tolist() == [6000] * 10
    # normalisation statistics of the training split
    x, _ = next(ds.eval_batches("val", 6000))
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05


def test_val_split_is_seeded_and_disjoint(fmnist):
    again = load_dataset("fashion-mnist", download=False)
    assert torch.equal(again.val_y, fmnist.val_y) and torch.equal(again.val_x, fmnist.val_x)
    other = load_dataset("fashion-mnist", download=False, seed=1)
    assert not torch.equal(other.val_x, fmnist.val_x)
    # no validation image is also a training image (compare by row hash)
    def keys(x):
        return set(map(bytes, x.reshape(len(x), -1).numpy()))
    assert not keys(fmnist.val_x[:500]) & keys(fmnist.train_x)


def test_idx_raw_and_gz_and_corrupt(tmp_path):
    imgs = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    header = (0x0803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in imgs.shape)
    raw = tmp_path / "a-idx3-ubyte"
    raw.write_bytes(header + imgs.tobytes())
    assert np.array_equal(read_idx(raw, 3), imgs)
    gz = tmp_path / "b.gz"
    gz.write_bytes(gzip.compress(header + imgs.tobytes()))
    assert np.array_equal(read_idx(gz, 3), imgs)
    trunc = tmp_path / "trunc"
    trunc.write_bytes(header + imgs.tobytes()[:-7])
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(trunc, 3)
    bad_magic = tmp_path / "magic"
    bad_magic.write_bytes((0x0D03).to_bytes(4, "big") + header[4:] + imgs.tobytes())
    with pytest.raises(DatasetError, match="magic"):
        read_idx(bad_magic, 3)
    with pytest.raises(DatasetError, match="magic"):  # an images file read as labels
        read_idx(raw, 1)
    bad_gz = tmp_path / "c.gz"
    bad_gz.write_bytes(gzip.compress(header + imgs.tobytes())[:-10])
    with pytest.raises(DatasetError):
        read_idx(bad_gz, 3)
    tiny = tmp_path / "tiny"
    tiny.write_bytes(b"\x00\x00")
    with pytest.raises(DatasetError):
        read_idx(tiny, 3)


def _write_fmnist(root: Path, n_train=50, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    data = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        (root / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(
            (0x0803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in x.shape) + x.tobytes()))
        (root / f"{split}-labels-idx1-ubyte").write_bytes(
            (0x0801).to_bytes(4, "big") + n.to_bytes(4, "big") + y.tobytes())
        data[split] = (x, y)
    return data


def test_fashion_mnist_from_data_root(tmp_path):
    data = _write_fmnist(tmp_path)
    ds = load_dataset("fashion-mnist", data_root=tmp_path, val_fraction=0.2, download=False)
    assert len(ds.train_y) == 40 and len(ds.val_y) == 10
    assert torch.equal(ds.test_x[:, 0], torch.from_numpy(data["t10k"][0]))
    # train + val together are the training file, every image exactly once
    allx = torch.cat([ds.train_x, ds.val_x])[:, 0].reshape(50, -1)
    order = sorted(map(bytes, allx.numpy()))
    assert order == sorted(map(bytes, data["train"][0].reshape(50, -1)))


def test_fashion_mnist_corrupt_labels_and_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("EVONORM_CACHE", str(tmp_path / "cache"))
    _write_fmnist(tmp_path / "d")
    lab = tmp_path / "d" / "train-labels-idx1-ubyte"
    lab.write_bytes(lab.read_bytes()[:-1] + b"\x0c")      # label 12
    with pytest.raises(DatasetError, match="out of range"):
        load_dataset("fashion-mnist", data_root=tmp_path / "d", download=False)
    lab.write_bytes(lab.read_bytes()[:-3])                 # truncated
    with pytest.raises(DatasetError, match="truncated"):
        load_dataset("fashion-mnist", data_root=tmp_path / "d", download=False)


def test_missing_files_name_the_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("EVONORM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", data_root=tmp_path / "nowhere", download=False)
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg and str(tmp_path / "cache") in msg and "\n" not in msg
    import evaluators.datasets.images as images
    monkeypatch.setattr(images, "SYSTEM_FASHION_MNIST", tmp_path / "no-system-files")
    with pytest.raises(DatasetError, match="not found"):
        load_dataset("fashion-mnist", data_root=tmp_path / "nowhere", download=False)


def test_unknown_dataset():
    with pytest.raises(DatasetError, match="unknown dataset 'mnist'") as err:
        load_dataset("mnist")
    assert isinstance(err.value, ValueError) and "fashion-mnist" in str(err.value)


def _write_cifar(root: Path, per_file=7, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in list(CIFAR10_TRAIN) + [CIFAR10_TEST]:
        labels = rng.integers(0, 10, per_file, dtype=np.uint8)
        pixels = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
        (root / name).write_bytes(np.concatenate([labels[:, None], pixels], 1).tobytes())
        written[name] = (pixels.reshape(-1, 3, 32, 32), labels)
    return written


def test_cifar10_binary_read_back_exactly(tmp_path):
    written = _write_cifar(tmp_path / "cifar-10-batches-bin")
    x, y = read_cifar_bin(tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin")
    assert torch.equal(x, torch.from_numpy(written["data_batch_3.bin"][0]))
    assert torch.equal(y, torch.from_numpy(written["data_batch_3.bin"][1].astype(np.int64)))
    ds = load_dataset("cifar10", data_root=tmp_path, val_fraction=0.2, download=False)
    assert (ds.in_channels, ds.image_size, ds.num_classes, ds.padding, ds.flip) == (3, 32, 10, 4, True)
    assert len(ds.train_y) + len(ds.val_y) == 35 and len(ds.val_y) == 7
    assert torch.equal(ds.test_x, torch.from_numpy(written[CIFAR10_TEST][0]))
    assert torch.equal(ds.test_y, torch.from_numpy(written[CIFAR10_TEST][1].astype(np.int64)))
    train_x = np.concatenate([written[n][0] for n in CIFAR10_TRAIN])
    got = torch.cat([ds.train_x, ds.val_x]).reshape(35, -1).numpy()
    assert sorted(map(bytes, got)) == sorted(map(bytes, train_x.reshape(35, -1)))
    # the channel planes are R, G, B in that order: the mean is the per-plane mean of the
    # images written to the files (those that landed in the training split), computed here
    in_train = set(map(bytes, ds.train_x.reshape(len(ds.train_x), -1).numpy()))
    planes = train_x.reshape(35, 3, 32, 32)
    chosen = np.array([bytes(row) in in_train for row in train_x.reshape(35, -1)])
    assert chosen.sum() == len(ds.train_y) == 28
    expected = planes[chosen].astype(np.float64).mean(axis=(0, 2, 3))
    assert min(abs(expected[i] - expected[j]) for i, j in ((0, 1), (0, 2), (1, 2))) > 1e-3  # a swap shows
    assert np.allclose(ds.mean.numpy(), expected, rtol=0, atol=1e-4)


def test_cifar10_truncated_and_corrupt(tmp_path):
    _write_cifar(tmp_path)
    f = tmp_path / "data_batch_2.bin"
    good = f.read_bytes()
    f.write_bytes(good[:-100])
    with pytest.raises(DatasetError, match="truncated"):
        load_dataset("cifar10", data_root=tmp_path, download=False)
    f.write_bytes(b"")
    with pytest.raises(DatasetError):
        load_dataset("cifar10", data_root=tmp_path, download=False)
    bad = bytearray(good)
    bad[3073] = 200                                        # label of record 1
    f.write_bytes(bytes(bad))
    with pytest.raises(DatasetError, match="record 1 has label 200"):
        load_dataset("cifar10", data_root=tmp_path, download=False)


def test_augmentation_on_device_crop_and_flip(tmp_path):
    _write_cifar(tmp_path, per_file=20)
    ds = load_dataset("cifar10", data_root=tmp_path, download=False)
    g = torch.Generator().manual_seed(0)
    x = ds.train_x[:64]
    out = ds.augment(x, g)
    assert out.shape == x.shape and out.dtype == torch.uint8
    # every output is a shifted (by at most 4) and possibly flipped copy with zero fill
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(64):
        found = False
        for cand in (padded[i], padded[i].flip(2)):
            for dy in range(9):
                for dx in range(9):
                    if torch.equal(cand[:, dy:dy + 32, dx:dx + 32], out[i]):
                        found = True
        assert found
    flipped = sum(not torch.equal(ds.augment(x[:1], g), x[:1]) for _ in range(20))
    assert flipped > 10
    # Fashion-MNIST-sized data: padding 2 and no flips
    syn = load_dataset("synthetic")
    assert (syn.padding, syn.flip) == (2, False)


def test_batches_normalised_and_seeded():
    ds = load_dataset("synthetic", seed=3)
    a = ds.sample_batch(32, torch.Generator().manual_seed(5))
    b = ds.sample_batch(32, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].dtype == torch.float32 and a[0].shape == (32, 1, 16, 16)
    it = ds.train_batches(100, torch.Generator().manual_seed(0))
    n_epoch = len(ds.train_y) // 100
    seen = torch.cat([next(it)[1] for _ in range(n_epoch)])
    assert len(seen) == n_epoch * 100
    batches = list(ds.eval_batches("test", 300))
    assert [len(y) for _, y in batches] == [300, 300, 300, 100]
    x = torch.cat([b[0] for b in batches])
    assert torch.allclose(x, ds.normalise(ds.test_x))
    with pytest.raises(DatasetError):
        list(ds.eval_batches("holdout"))


def test_synthetic_fast_seeded_balanced():
    t = time.perf_counter()
    ds = load_dataset("synthetic", seed=0)
    assert time.perf_counter() - t < 2.0  # about 0.1 s on an idle machine
    assert torch.equal(ds.train_x, load_dataset("synthetic", seed=0).train_x)
    assert not torch.equal(ds.train_x, load_dataset("synthetic", seed=1).train_x)
    (x, y), _ = make_synthetic(0)
    counts = torch.bincount(y, minlength=10)
    assert counts.min() > 200 and x.dtype == torch.uint8
    assert 40 < x.float().mean() < 220 and x.float().std() > 20


def test_train_batches_augment_from_a_given_epoch():
    ds = load_dataset("synthetic", seed=1)
    n, bs = len(ds.train_y), 100
    per_epoch = n // bs
    perms = torch.Generator().manual_seed(7)
    it = ds.train_batches(bs, torch.Generator().manual_seed(7), augment_from_epoch=1)
    first = torch.randperm(n, generator=perms)
    for i in range(per_epoch):  # epoch 0: exactly the stored images, in the seeded order
        x, y = next(it)
        idx = first[i * bs:(i + 1) * bs]
        assert torch.equal(x, ds.normalise(ds.train_x[idx])) and torch.equal(y, ds.train_y[idx])
    x, y = next(it)  # epoch 1: cropped, so no longer the stored images
    plain = ds.train_batches(bs, torch.Generator().manual_seed(7), augment_from_epoch=None)
    for _ in range(per_epoch):
        next(plain)
    px, py = next(plain)
    assert torch.equal(y, py) and not torch.equal(x, px)
    always = ds.train_batches(bs, torch.Generator().manual_seed(7))
    assert not torch.equal(next(always)[0], ds.normalise(ds.train_x[first[:bs]]))
