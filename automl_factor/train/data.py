"""Datasets by name, loaded once into uint8 tensors, with augmentation on whole batches.

Following airbench, a split is one ``(N, C, H, W)`` uint8 tensor plus its labels: a batch is an index
slice of a permutation, and random crop and flip run on the whole batch with tensor ops, with no
per-image Python and no worker processes. uint8 keeps CIFAR-10 at 150 MB, so it fits on any GPU.

Specs understood by `load`:

- ``digits``: scikit-learn's bundled 8x8 digits (offline; for tests and quick trials).
- ``cifar10``, ``cifar100``: torchvision's datasets under `root`.
- ``imagefolder:DIR``: the Tiny-ImageNet layout (``DIR/train/<class>/...``, ``DIR/val/...``).
- ``parquet:DIR``: the Hugging Face image layout (``*train*.parquet``, ``*test*.parquet``).

Example::

    bundle = load("digits", val_fraction=0.1)
    for x, y in iterate_batches(bundle.train, bundle, 128, train=True, generator=torch.Generator().manual_seed(0)):
        ...
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Dataset", "DataBundle", "load", "iterate_batches", "augment_batch", "SPECS"]

SPECS = ("digits", "cifar10", "cifar100", "imagefolder:DIR", "parquet:DIR")
_DEFAULT_ROOT = "~/.cache/automl_factor/data"
_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
# The digits test split is fixed (not drawn from `seed`) so that every trial is scored on the same images.
_DIGITS_TEST_FRACTION = 0.2
_DIGITS_SPLIT_SEED = 0
_STATS_CHUNK = 4096  # images per chunk when computing mean/std, to avoid a float copy of the whole set


@dataclass(frozen=True)
class Dataset:
    """One split: uint8 images ``(N, C, H, W)`` and int64 labels ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]


@dataclass(frozen=True)
class DataBundle:
    """The splits of one dataset and what training needs to know about them.

    `mean` and `std` are per channel in [0, 1] units, computed on `train`; `crop_padding` and `flip`
    are the augmentation recipe usual for this dataset.
    """

    train: Dataset
    val: Dataset | None
    test: Dataset
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int
    flip: bool

    def to(self, device: torch.device | str) -> "DataBundle":
        """The same bundle with every split on ``device``: a trial copies its data to the GPU once,
        not once per epoch (``iterate_batches`` then finds it there)."""
        def moved(split: Dataset | None) -> Dataset | None:
            return None if split is None else Dataset(split.images.to(device), split.labels.to(device))

        return dataclasses.replace(self, train=moved(self.train), val=moved(self.val), test=moved(self.test))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image, e.g. ``(3, 32, 32)`` for CIFAR."""
        _, channels, height, width = self.train.images.shape
        return channels, height, width


@dataclass(frozen=True)
class _Raw:
    """What a dataset reader returns before the val split, subset and statistics."""

    train: Dataset
    test: Dataset
    num_classes: int
    crop_padding: int
    flip: bool


def load(
    spec: str,
    *,
    root: str | None = None,
    val_fraction: float = 0.0,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
    download: bool = False,
) -> DataBundle:
    """Load the dataset named by `spec` (see the module docstring) into memory.

    `val_fraction` of the training images, drawn with `seed`, become `val`; then `train_subset` keeps
    the first that many of the remaining training images, and `test_subset` the first that many test
    images (to score quickly; the full test set otherwise). The test split never depends on `seed`.
    `root` and `download` apply to the torchvision datasets only.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    raw = _read(spec, root=root, download=download)
    train, val = _split_val(raw.train, val_fraction, seed)
    if train_subset is not None:
        if not 1 <= train_subset <= len(train):
            raise ValueError(f"train_subset must be in [1, {len(train)}] for {spec!r}, got {train_subset}")
        train = Dataset(train.images[:train_subset], train.labels[:train_subset])
    test = raw.test
    if test_subset is not None:
        if not 1 <= test_subset <= len(test):
            raise ValueError(f"test_subset must be in [1, {len(test)}] for {spec!r}, got {test_subset}")
        test = Dataset(test.images[:test_subset], test.labels[:test_subset])
    mean, std = _channel_stats(train.images)
    return DataBundle(
        train=train, val=val, test=test, num_classes=raw.num_classes,
        mean=mean, std=std, crop_padding=raw.crop_padding, flip=raw.flip,
    )


def augment_batch(
    x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random crop with `padding` zero pixels on each side, then (if `flip`) random horizontal flips.

    Works on a whole ``(B, C, H, W)`` batch of any dtype by gathering each image's window from the
    padded batch with one advanced-indexing call. Random numbers are drawn on `generator`'s device:
    a CPU generator gives the same images on any device; a generator on the batch's GPU keeps the
    whole step on the GPU (no host-to-device copy per batch).
    """
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    batch, _, height, width = x.shape
    if padding > 0:
        padded = F.pad(x, (padding, padding, padding, padding))
        offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator, device=_rng_device(generator))
        offsets = offsets.to(x.device)
        rows = offsets[0, :, None] + torch.arange(height, device=x.device)  # (B, H)
        cols = offsets[1, :, None] + torch.arange(width, device=x.device)  # (B, W)
        images = torch.arange(batch, device=x.device)[:, None, None, None]
        channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[images, channels, rows[:, None, :, None], cols[:, None, None, :]]
    if flip:
        flipped = (torch.rand(batch, generator=generator, device=_rng_device(generator)) < 0.5).to(x.device)
        x = torch.where(flipped[:, None, None, None], x.flip(-1), x)
    return x


def _rng_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def iterate_batches(
    split: Dataset,
    bundle: DataBundle,
    batch_size: int,
    *,
    train: bool,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)``: `x` float32, normalized with the bundle's mean/std, on `device`.

    With ``train=True`` the order is a permutation drawn from `generator`, each batch is augmented
    with the bundle's recipe, and a last batch of a single image is dropped (batch norm cannot
    train on one); ``drop_last`` drops any partial last batch, so every step has one shape (what a
    compiled step or a CUDA graph needs). With ``train=False`` the order is fixed, nothing is
    augmented, and every image is seen once. A split already on `device` is not copied.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    images = split.images.to(device)
    labels = split.labels.to(device)
    mean = torch.tensor(bundle.mean, device=images.device).view(1, -1, 1, 1) * 255.0
    std = torch.tensor(bundle.std, device=images.device).view(1, -1, 1, 1) * 255.0
    count = len(split)
    order = torch.randperm(count, generator=generator, device=_rng_device(generator)).to(images.device) if train else None
    for start in range(0, count, batch_size):
        index = order[start : start + batch_size] if order is not None else slice(start, start + batch_size)
        x, y = images[index], labels[index]
        if drop_last and y.shape[0] < batch_size:
            break
        if train:
            if y.shape[0] < 2:
                break
            x = augment_batch(x, bundle.crop_padding, bundle.flip, generator)
        x = (x.float() - mean) / std
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, y


# --- readers -------------------------------------------------------------------------------------


def _read(spec: str, *, root: str | None, download: bool) -> _Raw:
    kind, _, argument = spec.partition(":")
    if kind == "digits" and not argument:
        return _read_digits()
    if kind in ("cifar10", "cifar100") and not argument:
        return _read_cifar(kind, root or _DEFAULT_ROOT, download)
    if kind in ("imagefolder", "parquet") and argument:
        folder = Path(argument).expanduser()
        if not folder.is_dir():
            raise ValueError(f"dataset folder {argument!r} of spec {spec!r} does not exist")
        return _read_imagefolder(folder) if kind == "imagefolder" else _read_parquet(folder)
    raise ValueError(f"unknown dataset {spec!r}; choose one of: {', '.join(SPECS)}")


def _read_digits() -> _Raw:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Values are 0..16; scale to the 0..255 range every other dataset uses.
    images = torch.from_numpy(np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(_DIGITS_SPLIT_SEED))
    num_test = round(_DIGITS_TEST_FRACTION * len(labels))
    test_index, train_index = order[:num_test].sort().values, order[num_test:].sort().values
    return _Raw(
        train=Dataset(images[train_index].contiguous(), labels[train_index]),
        test=Dataset(images[test_index].contiguous(), labels[test_index]),
        num_classes=10, crop_padding=1, flip=False,
    )


def _read_cifar(name: str, root: str, download: bool) -> _Raw:
    from torchvision import datasets

    dataset_class = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    root = os.path.expanduser(root)
    splits = []
    for is_train in (True, False):
        try:
            dataset = dataset_class(root, train=is_train, download=download)
        except RuntimeError as error:
            message = f"{name} not found under root {root!r}; pass download=True or another root ({error})"
            raise ValueError(message) from error
        images = torch.from_numpy(np.ascontiguousarray(dataset.data.transpose(0, 3, 1, 2)))
        splits.append(Dataset(images, torch.tensor(dataset.targets, dtype=torch.int64)))
    num_classes = 10 if name == "cifar10" else 100
    return _Raw(train=splits[0], test=splits[1], num_classes=num_classes, crop_padding=4, flip=True)


def _read_imagefolder(folder: Path) -> _Raw:
    train_dir, val_dir = folder / "train", folder / "val"
    for needed in (train_dir, val_dir):
        if not needed.is_dir():
            raise ValueError(
                f"imagefolder {str(folder)!r} has no {needed.name}/ folder; expected train/<class>/ and val/"
            )
    classes = sorted(entry.name for entry in train_dir.iterdir() if entry.is_dir())
    if not classes:
        raise ValueError(f"imagefolder {str(train_dir)!r} has no class subfolders")
    class_index = {name: index for index, name in enumerate(classes)}
    train_files = [(path, class_index[name]) for name in classes for path in _image_files(train_dir / name)]
    annotations = val_dir / "val_annotations.txt"
    if annotations.is_file():  # Tiny-ImageNet: val/images/* labelled by a tab-separated file
        val_files = []
        for line in annotations.read_text().splitlines():
            if not line.strip():
                continue
            filename, name = line.split("\t")[:2]
            val_files.append((val_dir / "images" / filename, _class_of(name, class_index, annotations)))
    else:
        val_files = [
            (path, _class_of(entry.name, class_index, val_dir))
            for entry in sorted(val_dir.iterdir()) if entry.is_dir()
            for path in _image_files(entry)
        ]
    train, test = _decode_split(train_files, train_dir), _decode_split(val_files, val_dir)
    return _Raw(train=train, test=test, num_classes=len(classes), crop_padding=_crop_padding(train), flip=True)


def _image_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.suffix.lower() in _IMAGE_SUFFIXES and path.is_file())


def _class_of(name: str, class_index: dict[str, int], where: Path) -> int:
    if name not in class_index:
        raise ValueError(f"class {name!r} in {str(where)!r} is not among the {len(class_index)} train classes")
    return class_index[name]


def _decode_split(files: Sequence[tuple[Path, int]], where: Path) -> Dataset:
    if not files:
        raise ValueError(f"no images ({', '.join(_IMAGE_SUFFIXES)}) found under {str(where)!r}")
    images = _decode_all([path for path, _ in files], [str(path) for path, _ in files])
    return Dataset(images, torch.tensor([label for _, label in files], dtype=torch.int64))


def _read_parquet(folder: Path) -> _Raw:
    import pyarrow.parquet as pq

    splits, metadata = [], {}
    for pattern in ("*train*.parquet", "*test*.parquet"):
        files = sorted(folder.glob(pattern))
        if not files:
            raise ValueError(f"parquet folder {str(folder)!r} has no file matching {pattern!r}")
        image_bytes, labels = [], []
        for path in files:
            schema = pq.read_schema(path)
            if not {"img", "label"} <= set(schema.names):
                raise ValueError(
                    f"parquet file {str(path)!r} has columns {schema.names}; need 'img' (struct with 'bytes') and 'label'"
                )
            metadata = metadata or (schema.metadata or {})
            table = pq.read_table(path, columns=["img", "label"])
            image_bytes += table.column("img").combine_chunks().field("bytes").to_pylist()
            labels += table.column("label").to_pylist()
        if not labels:
            raise ValueError(f"parquet files matching {pattern!r} in {str(folder)!r} hold no rows")
        images = _decode_all(image_bytes, [f"{pattern} row {row}" for row in range(len(labels))])
        splits.append(Dataset(images, torch.tensor(labels, dtype=torch.int64)))
    train, test = splits
    num_classes = _classes_from_metadata(metadata) or int(max(train.labels.max(), test.labels.max())) + 1
    return _Raw(train=train, test=test, num_classes=num_classes, crop_padding=_crop_padding(train), flip=True)


def _classes_from_metadata(metadata: dict[bytes, bytes]) -> int | None:
    """Class count from a ``classes`` entry (comma-separated names) or Hugging Face's ClassLabel names."""
    if b"classes" in metadata:
        return len(metadata[b"classes"].decode().split(","))
    if b"huggingface" in metadata:
        features = json.loads(metadata[b"huggingface"]).get("info", {}).get("features", {})
        names = features.get("label", {}).get("names")
        return len(names) if names else None
    return None


def _crop_padding(train: Dataset) -> int:
    # 4 pixels for 32x32 CIFAR; scale with the image so 64x64 Tiny-ImageNet gets 8.
    return max(1, train.images.shape[-1] // 8)


def _decode_all(sources: Sequence[Path | bytes], names: Sequence[str]) -> torch.Tensor:
    """Decode image files or encoded bytes to one uint8 ``(N, 3, H, W)`` tensor.

    Pillow releases the GIL while decoding, so a thread pool speeds up 100k JPEGs without processes.
    """
    from PIL import Image

    def decode(source: Path | bytes) -> np.ndarray:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            return np.asarray(image.convert("RGB"))

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        arrays = list(pool.map(decode, sources, chunksize=64))
    height, width, _ = arrays[0].shape
    for array, name in zip(arrays, names):
        if array.shape[:2] != (height, width):
            found = f"{array.shape[1]}x{array.shape[0]}"
            raise ValueError(f"image {name} is {found}, expected {width}x{height} like the first image")
    return torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2).copy())


# --- splits and statistics -----------------------------------------------------------------------


def _split_val(train: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    if val_fraction == 0.0:
        return train, None
    count = len(train)
    num_val = max(1, round(val_fraction * count))
    if num_val >= count:
        raise ValueError(f"val_fraction {val_fraction} leaves no training images out of {count}")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    # Sorted so the remaining training images keep their original order (train_subset takes a prefix).
    val_index, train_index = order[:num_val].sort().values, order[num_val:].sort().values
    return (
        Dataset(train.images[train_index], train.labels[train_index]),
        Dataset(train.images[val_index], train.labels[val_index]),
    )


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units, accumulated in float64 chunk by chunk."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, images.shape[0], _STATS_CHUNK):
        chunk = images[start : start + _STATS_CHUNK].to(torch.float64) / 255.0
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += chunk.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())
