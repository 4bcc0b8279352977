"""Image datasets, held in device memory and augmented on the device.

`load_dataset(name, device)` returns an `ImageDataset`: uint8 images (N, C, H, W)
and int64 labels, already on the device, split into train / val (carved from
the training set with a fixed seed) / test, plus the per-channel mean and std
used to normalise batches. There is no DataLoader and no worker process: a
training batch is an index gather, a random crop (zero padding 2 for 28x28 and
16x16 images, 4 for 32x32) and, for CIFAR-10 only, a horizontal flip, all done
by tensor ops where the images live.

Sources:

- ``fashion-mnist``: the four standard idx files (gzipped or not), looked up in
  ``data_root``, then ``/usr/share/datasets/fashion-mnist`` (Debian's
  ``dataset-fashion-mnist``), then evonorm's cache folder
  (``evaluators.datasets.base.cache_dir``: ``$EVONORM_CACHE``, else ``~/.cache/evonorm``)/fashion-mnist. When they are nowhere and ``download`` is
  true they are fetched into the cache and checked against the upstream MD5s.
- ``cifar10``: the *binary* version (``data_batch_1..5.bin``, ``test_batch.bin``;
  records of 1 label byte + 3072 pixel bytes) in ``data_root`` or the cache,
  directly or inside ``cifar-10-batches-bin/``. Pickles are never loaded.
- ``synthetic``: a small learnable task generated from the seed (class-dependent
  spatial patterns, random shifts, noise), for tests.

Every problem with the data (unknown name, missing, truncated or corrupt files)
is a `DatasetError`, a `ValueError` with a one-line message.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from primitives.util import write_atomic

from evaluators.datasets.base import DatasetError, EpochStream, cache_dir

DATASET_NAMES = ("fashion-mnist", "cifar10", "synthetic")
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_FILES = {  # name -> MD5 of the upstream .gz
    "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
CIFAR10_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST = "test_batch.bin"
CIFAR10_RECORD = 1 + 3 * 32 * 32


@dataclass
class ImageDataset:
    """Images as uint8 (N, C, H, W) and labels as int64, all on `device`."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: torch.Tensor          # (C,) float32, in pixel units 0..255
    std: torch.Tensor           # (C,) float32
    padding: int                # random-crop padding
    flip: bool                  # random horizontal flips
    device: torch.device = field(default=torch.device("cpu"))

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])

    def split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in ("train", "val", "test"):
            raise DatasetError(f"unknown split {split!r} (expected train, val or test)")
        return getattr(self, f"{split}_x"), getattr(self, f"{split}_y")

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (or float pixel) images -> float32, per-channel standardised."""
        shape = (1, -1, 1, 1)
        return (x.float() - self.mean.view(shape)) / self.std.view(shape)

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random crop with zero padding (and flips for CIFAR-10) of a uint8 batch,
        on its device. Random numbers come from `generator` (any device)."""
        n, c, h, w = x.shape
        p = self.padding
        gdev = generator.device
        if p:
            padded = torch.nn.functional.pad(x, (p, p, p, p))
            oy = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=gdev).to(x.device)
            ox = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=gdev).to(x.device)
            rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
            cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
            b = torch.arange(n, device=x.device)[:, None, None, None]
            ch = torch.arange(c, device=x.device)[None, :, None, None]
            x = padded[b, ch, rows, cols]
        if self.flip:
            mask = torch.rand(n, generator=generator, device=gdev).to(x.device) < 0.5
            x = torch.where(mask[:, None, None, None], x.flip(3), x)
        return x

    def batch(self, indices: torch.Tensor, generator: torch.Generator | None = None,
              split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised float batch at `indices` of `split`; augmented when a
        generator is given."""
        xs, ys = self.split(split)
        indices = indices.to(xs.device)
        x = xs[indices]
        if generator is not None:
            x = self.augment(x, generator)
        return self.normalise(x), ys[indices]

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A random (with replacement) augmented training batch."""
        idx = torch.randint(0, len(self.train_y), (batch_size,), generator=generator,
                            device=generator.device)
        return self.batch(idx, generator)

    def train_batches(self, batch_size: int, generator: torch.Generator,
                      augment_from_epoch: int | None = 0) -> "BatchStream":
        """Endless training batches, epoch by epoch through seeded permutations
        (every image once per epoch; the last partial batch of an epoch is
        dropped). Epochs numbered `augment_from_epoch` and later (0: all, None:
        none) are augmented. The stream can be saved and resumed (`BatchStream.state`)."""
        n = len(self.train_y)
        if batch_size > n:
            raise DatasetError(f"batch size {batch_size} exceeds the {n} training images")
        return BatchStream(self, batch_size, generator, augment_from_epoch)

    def eval_batches(self, split: str = "val", batch_size: int = 1000) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised, unaugmented batches of the val or test split (or train), in order."""
        xs, ys = self.split(split)
        for start in range(0, len(ys), batch_size):
            yield self.normalise(xs[start:start + batch_size]), ys[start:start + batch_size]

    def to(self, device) -> "ImageDataset":
        device = torch.device(device)
        moved = {k: getattr(self, k).to(device) for k in
                 ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y", "mean", "std")}
        return ImageDataset(name=self.name, num_classes=self.num_classes, padding=self.padding,
                            flip=self.flip, device=device, **moved)

    def __repr__(self) -> str:
        return (f"ImageDataset({self.name!r}, train={len(self.train_y)}, val={len(self.val_y)}, "
                f"test={len(self.test_y)}, shape={tuple(self.train_x.shape[1:])}, "
                f"classes={self.num_classes}, device={self.device})")


class BatchStream(EpochStream):
    """The iterator behind `ImageDataset.train_batches`: a permutation of the training
    images per epoch, augmented from `augment_from_epoch` on; resumable (`EpochStream`)."""

    def __init__(self, dataset: ImageDataset, batch_size: int, generator: torch.Generator,
                 augment_from_epoch: int | None):
        super().__init__(dataset, batch_size, generator)
        self.augment_from_epoch = augment_from_epoch

    def _size(self) -> int:
        return len(self.dataset.train_y)

    def _permutation(self, n: int) -> torch.Tensor:
        return torch.randperm(n, generator=self.generator, device=self.generator.device)

    def _batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        augment = self.augment_from_epoch is not None and self.epoch >= self.augment_from_epoch
        return self.dataset.batch(indices, self.generator if augment else None)


def load_dataset(name: str, device="cpu", data_root=None, val_fraction: float = 0.1, seed: int = 0,
                 download: bool = True) -> ImageDataset:
    """Load `name` into memory on `device`; `val_fraction` of the training images,
    chosen by `seed`, become the validation split."""
    if not isinstance(name, str) or name not in DATASET_NAMES:
        raise DatasetError(f"unknown dataset {name!r} (expected one of: {', '.join(DATASET_NAMES)})")
    if not 0 <= val_fraction < 1:
        raise DatasetError(f"val_fraction must lie in [0, 1), got {val_fraction!r}")
    if name == "fashion-mnist":
        (trx, tr_y), (tex, te_y) = _load_fashion_mnist(data_root, download)
        classes, flip = 10, False
    elif name == "cifar10":
        (trx, tr_y), (tex, te_y) = _load_cifar10(data_root, download)
        classes, flip = 10, True
    else:
        (trx, tr_y), (tex, te_y) = make_synthetic(seed)
        classes, flip = 10, False
    size = trx.shape[-1]
    padding = 4 if size >= 32 else 2
    n = len(tr_y)
    n_val = int(round(n * val_fraction))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    train_x, train_y = trx[train_idx], tr_y[train_idx]
    mean, std = _channel_stats(train_x)
    ds = ImageDataset(name=name, train_x=train_x, train_y=train_y, val_x=trx[val_idx],
                      val_y=tr_y[val_idx], test_x=tex, test_y=te_y, num_classes=classes,
                      mean=mean, std=std, padding=padding, flip=flip)
    return ds.to(device)


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact per-channel mean and std of uint8 images, from a 256-bin histogram."""
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for c in range(x.shape[1]):
        hist = torch.bincount(x[:, c].reshape(-1), minlength=256).double()
        n = hist.sum().clamp_min(1)
        m = (hist * values).sum() / n
        var = (hist * (values - m) ** 2).sum() / n
        means.append(m)
        stds.append(var.sqrt())
    return torch.stack(means).float(), torch.stack(stds).float().clamp_min(1e-3)


# ----------------------------------------------------------------------------- idx files

def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        if head == b"\x1f\x8b":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DatasetError(f"cannot read {path}: {err}") from None


def read_idx(path, expect_dims: int) -> np.ndarray:
    """An unsigned-byte idx file (gzipped or not) as a numpy array; DatasetError when
    the magic number, the dimensions or the length do not match."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 + 4 * expect_dims:
        raise DatasetError(f"{path}: truncated idx header ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if magic != 0x0800 + expect_dims:
        raise DatasetError(f"{path}: bad idx magic number 0x{magic:08x} "
                           f"(expected 0x{0x0800 + expect_dims:08x}, unsigned bytes in {expect_dims} dims)")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(expect_dims)]
    offset = 4 + 4 * expect_dims
    expected = int(np.prod(dims)) if dims else 0
    if len(data) - offset != expected:
        raise DatasetError(f"{path}: {len(data) - offset} data bytes, header {dims} says {expected} "
                           f"(truncated or corrupt)")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


_IDX_CACHE: dict[tuple, np.ndarray] = {}


def _read_idx_cached(path: Path, expect_dims: int) -> np.ndarray:
    """`read_idx`, remembered per process (keyed by path, size and mtime): a worker or
    the eval command that loads the dataset again skips the gunzip."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, expect_dims)
    if key not in _IDX_CACHE:
        if len(_IDX_CACHE) >= 8:
            _IDX_CACHE.clear()
        _IDX_CACHE[key] = read_idx(path, expect_dims)
    return _IDX_CACHE[key]


def _find(dirs: list[Path], names: list[str]) -> Path | None:
    for d in dirs:
        for n in names:
            p = d / n
            if p.is_file():
                return p
    return None


def _fashion_dirs(data_root) -> list[Path]:
    dirs = []
    if data_root is not None:
        root = Path(data_root).expanduser()
        dirs += [root, root / "fashion-mnist", root / "FashionMNIST" / "raw"]
    dirs += [SYSTEM_FASHION_MNIST, cache_dir() / "fashion-mnist"]
    return dirs


def _load_fashion_mnist(data_root, download: bool):
    dirs = _fashion_dirs(data_root)
    paths = {}
    for stem in FASHION_MNIST_FILES:
        paths[stem] = _find(dirs, [stem + ".gz", stem])
    missing = [s for s, p in paths.items() if p is None]
    if missing and download and data_root is None:
        try:
            _download_fashion_mnist(cache_dir() / "fashion-mnist", missing)
        except Exception as err:  # network or checksum trouble: say where we looked
            raise DatasetError(f"Fashion-MNIST files {missing} not found in "
                               f"{', '.join(map(str, dirs))}; download failed: {err}") from None
        for stem in missing:
            paths[stem] = _find(dirs, [stem + ".gz", stem])
        missing = [s for s, p in paths.items() if p is None]
    if missing:
        raise DatasetError(f"Fashion-MNIST files {', '.join(missing)} (.gz or raw) not found in "
                           f"{', '.join(map(str, dirs))}")
    out = []
    for split in ("train", "t10k"):
        imgs = _read_idx_cached(paths[f"{split}-images-idx3-ubyte"], 3)
        labels = _read_idx_cached(paths[f"{split}-labels-idx1-ubyte"], 1)
        if len(imgs) != len(labels):
            raise DatasetError(f"Fashion-MNIST {split}: {len(imgs)} images but {len(labels)} labels")
        if labels.size and labels.max() > 9:
            raise DatasetError(f"Fashion-MNIST {split}: label {int(labels.max())} out of range 0..9")
        out.append((torch.from_numpy(imgs.copy()).unsqueeze(1),
                    torch.from_numpy(labels.astype(np.int64))))
    return out


def _fetch(url: str, dest: Path, md5: str) -> None:
    """Download `url` (into memory: the largest, CIFAR-10, is 170 MB) and write it to `dest`
    atomically once its MD5 is checked."""
    with urllib.request.urlopen(url, timeout=60) as resp:
        data = resp.read()
    if hashlib.md5(data).hexdigest() != md5:
        raise DatasetError(f"{url}: MD5 {hashlib.md5(data).hexdigest()} does not match the expected {md5}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(dest, data)


def _download_fashion_mnist(dest: Path, stems) -> None:
    for stem in stems:
        _fetch(FASHION_MNIST_URL + stem + ".gz", dest / (stem + ".gz"), FASHION_MNIST_FILES[stem])


# ----------------------------------------------------------------------------- CIFAR-10

def _cifar_dirs(data_root) -> list[Path]:
    dirs = []
    if data_root is not None:
        root = Path(data_root).expanduser()
        dirs += [root, root / "cifar-10-batches-bin", root / "cifar10" / "cifar-10-batches-bin"]
    c = cache_dir() / "cifar10"
    dirs += [c, c / "cifar-10-batches-bin"]
    return dirs


def read_cifar_bin(path) -> tuple[torch.Tensor, torch.Tensor]:
    """One CIFAR-10 binary batch file -> (uint8 images (N, 3, 32, 32), int64 labels)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err}") from None
    if not data or len(data) % CIFAR10_RECORD:
        raise DatasetError(f"{path}: {len(data)} bytes is not a whole number of "
                           f"{CIFAR10_RECORD}-byte records (truncated or corrupt)")
    rec = np.frombuffer(data, dtype=np.uint8).reshape(-1, CIFAR10_RECORD)
    labels = rec[:, 0]
    if labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise DatasetError(f"{path}: record {bad} has label {int(labels[bad])} (expected 0..9; corrupt file)")
    imgs = rec[:, 1:].reshape(-1, 3, 32, 32)
    return torch.from_numpy(imgs.copy()), torch.from_numpy(labels.astype(np.int64))


def _load_cifar10(data_root, download: bool):
    dirs = _cifar_dirs(data_root)
    names = list(CIFAR10_TRAIN) + [CIFAR10_TEST]

    def locate():
        for d in dirs:
            if all((d / n).is_file() for n in names):
                return d
        return None

    found = locate()
    if found is None and download and data_root is None:
        try:
            _download_cifar10(cache_dir() / "cifar10")
        except Exception as err:
            raise DatasetError(f"CIFAR-10 binary files not found in {', '.join(map(str, dirs))}; "
                               f"download failed: {err}") from None
        found = locate()
    if found is None:
        raise DatasetError(f"CIFAR-10 binary files ({', '.join(names)}) not found in "
                           f"{', '.join(map(str, dirs))}")
    parts = [read_cifar_bin(found / n) for n in CIFAR10_TRAIN]
    train = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    return train, read_cifar_bin(found / CIFAR10_TEST)


def _download_cifar10(dest: Path) -> None:
    archive = dest / "cifar-10-binary.tar.gz"
    if not archive.is_file():
        _fetch(CIFAR10_URL, archive, CIFAR10_MD5)
    wanted = {f"cifar-10-batches-bin/{n}" for n in list(CIFAR10_TRAIN) + [CIFAR10_TEST]}
    with tarfile.open(archive, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.name in wanted and m.isfile()]
        tar.extractall(dest, members=members, filter="data")


# ----------------------------------------------------------------------------- synthetic

def make_synthetic(seed: int = 0, n_train: int = 3000, n_test: int = 1000, size: int = 16,
                   channels: int = 1, classes: int = 10):
    """A learnable 10-class task: each class is a fixed smooth pattern (two
    oriented gratings and a blob at a class-specific place); samples are shifted
    by up to 2 pixels, rescaled in contrast and noised. uint8 images. Generated
    with numpy (single-threaded, about 0.1 s)."""
    rng = np.random.default_rng(int(seed))
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    protos = np.zeros((classes, channels, size, size), np.float32)
    for k in range(classes):
        for c in range(channels):
            for _ in range(2):
                theta, freq, phase = rng.uniform(0, np.pi), rng.uniform(1.5, 4.0), rng.uniform(0, 2 * np.pi)
                protos[k, c] += np.cos(freq * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
            cy, cx = rng.uniform(-0.6, 0.6, 2)
            protos[k, c] += 2.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.08)
    pad = 2
    padded = np.pad(protos, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="edge")

    def draw(n):
        y = rng.integers(0, classes, n)
        oy, ox = rng.integers(0, 2 * pad + 1, (2, n))
        rows = (oy[:, None] + np.arange(size))[:, None, :, None]
        cols = (ox[:, None] + np.arange(size))[:, None, None, :]
        x = padded[y[:, None, None, None], np.arange(channels)[None, :, None, None], rows, cols]
        x = x * rng.uniform(0.7, 1.3, (n, 1, 1, 1)).astype(np.float32)
        x = x + 0.8 * rng.standard_normal(x.shape, dtype=np.float32)
        x = np.clip(np.round(x * 40 + 128), 0, 255).astype(np.uint8)
        return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))

    return draw(n_train), draw(n_test)
