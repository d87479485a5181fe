"""Datasets load into uint8 tensors with fixed test splits; batch augmentation is a shifted window."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from automl_factor.train.data import Dataset, augment_batch, iterate_batches, load


@pytest.fixture(scope="module")
def digits():
    return load("digits")


def test_digits_loads_as_uint8_with_a_fixed_test_split(digits) -> None:
    assert len(digits.train) + len(digits.test) == 1797
    assert (len(digits.train), len(digits.test)) == (1438, 359)
    assert digits.val is None
    assert digits.image_shape == (1, 8, 8) and digits.num_classes == 10
    assert digits.train.images.dtype == torch.uint8 and digits.train.labels.dtype == torch.int64
    assert digits.train.images.min() == 0 and digits.train.images.max() == 255
    assert set(digits.test.labels.tolist()) == set(range(10))
    assert (digits.crop_padding, digits.flip) == (1, False)
    pixels = digits.train.images.double() / 255
    assert digits.mean[0] == pytest.approx(pixels.mean().item())
    assert digits.std[0] == pytest.approx(pixels.std(unbiased=False).item())


def test_val_fraction_and_train_subset_sizes() -> None:
    bundle = load("digits", val_fraction=0.25, train_subset=1000, seed=3)
    assert len(bundle.val) == round(0.25 * 1438) and len(bundle.train) == 1000
    pixels = bundle.train.images.double() / 255
    assert bundle.mean[0] == pytest.approx(pixels.mean().item())


def test_test_subset_keeps_the_first_test_images() -> None:
    full, cut = load("digits"), load("digits", test_subset=50)
    assert torch.equal(cut.test.images, full.test.images[:50]) and torch.equal(cut.test.labels, full.test.labels[:50])
    assert torch.equal(cut.train.images, full.train.images) and cut.mean == full.mean


def test_test_split_does_not_depend_on_the_seed_but_val_does() -> None:
    first, second = load("digits", val_fraction=0.1, seed=0), load("digits", val_fraction=0.1, seed=1)
    assert torch.equal(first.test.images, second.test.images)
    assert torch.equal(first.test.labels, second.test.labels)
    assert not torch.equal(first.val.images, second.val.images)


def _is_window(image: torch.Tensor, padded: torch.Tensor, flipped: bool) -> bool:
    """Per-image reference: is `image` some (possibly flipped) window of `padded`?"""
    height, width = image.shape[-2:]
    target = image.flip(-1) if flipped else image
    return any(
        torch.equal(padded[:, dy : dy + height, dx : dx + width], target)
        for dy in range(padded.shape[-2] - height + 1)
        for dx in range(padded.shape[-1] - width + 1)
    )


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_augment_batch_crops_shifted_windows_of_the_padded_images(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    x = (torch.rand(16, 3, 6, 7) * 255).to(dtype)
    out = augment_batch(x, 2, False, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == dtype
    padded = F.pad(x, (2, 2, 2, 2))
    assert all(_is_window(out[i], padded[i], flipped=False) for i in range(16))
    assert not torch.equal(out, x)  # 16 images, 25 offsets each: some moved


def test_augment_batch_flips_some_images_only_when_asked() -> None:
    x = torch.randint(0, 256, (64, 1, 5, 5), dtype=torch.uint8)
    unflipped = augment_batch(x, 0, False, torch.Generator().manual_seed(0))
    assert torch.equal(unflipped, x)
    out = augment_batch(x, 1, True, torch.Generator().manual_seed(0))
    padded = F.pad(x, (1, 1, 1, 1))
    flips = [not _is_window(out[i], padded[i], flipped=False) for i in range(64)]
    assert all(_is_window(out[i], padded[i], flipped=flips[i]) for i in range(64))
    assert 10 < sum(flips) < 54


def test_augment_batch_is_reproducible_with_a_seeded_generator() -> None:
    x = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8)
    first = augment_batch(x, 4, True, torch.Generator().manual_seed(7))
    assert torch.equal(first, augment_batch(x, 4, True, torch.Generator().manual_seed(7)))


def test_iterate_batches_for_training_and_evaluation(digits) -> None:
    split = Dataset(digits.train.images[:21], digits.train.labels[:21])
    train_batches = list(iterate_batches(split, digits, 10, train=True, generator=torch.Generator().manual_seed(0)))
    assert [len(y) for _, y in train_batches] == [10, 10]  # the single leftover image is dropped
    eval_batches = list(iterate_batches(split, digits, 10, train=False, channels_last=True))
    assert [len(y) for _, y in eval_batches] == [10, 10, 1]
    x = torch.cat([x for x, _ in eval_batches])
    expected = (split.images.float() / 255 - digits.mean[0]) / digits.std[0]
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, expected)
    assert torch.equal(torch.cat([y for _, y in eval_batches]), split.labels)


def test_iterate_batches_shuffles_reproducibly(digits) -> None:
    def labels(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        return torch.cat([y for _, y in iterate_batches(digits.train, digits, 256, train=True, generator=generator)]).tolist()

    assert labels(0) == labels(0) != labels(1)
    assert sorted(labels(0)) == sorted(digits.train.labels.tolist())


# --- folders on disk -----------------------------------------------------------------------------


def _png(color: tuple[int, int, int], size: int = 8) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_parquet(path: Path, colors: list[tuple[int, int, int]], labels: list[int], metadata: dict | None = None) -> None:
    images = [{"bytes": _png(color), "path": f"{i}.png"} for i, color in enumerate(colors)]
    table = pa.table({"img": images, "label": pa.array(labels, pa.int64())})
    if metadata:
        table = table.replace_schema_metadata(metadata)
    pq.write_table(table, path)


def test_parquet_folder_is_decoded_to_rgb_uint8(tmp_path: Path) -> None:
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 20, 30)]
    _write_parquet(tmp_path / "train-00000-of-00001.parquet", colors, [0, 1, 2, 1])
    _write_parquet(tmp_path / "test-00000-of-00001.parquet", colors[:2], [3, 0])
    bundle = load(f"parquet:{tmp_path}")
    assert bundle.train.images.shape == (4, 3, 8, 8) and bundle.train.images.dtype == torch.uint8
    assert bundle.train.images[3, :, 0, 0].tolist() == [10, 20, 30]
    assert bundle.train.labels.tolist() == [0, 1, 2, 1] and bundle.test.labels.tolist() == [3, 0]
    assert bundle.num_classes == 4  # max label + 1 over both splits
    assert (bundle.crop_padding, bundle.flip) == (1, True)


def test_parquet_class_count_comes_from_the_schema_metadata(tmp_path: Path) -> None:
    metadata = {"classes": "a,b,c,d,e"}
    _write_parquet(tmp_path / "train.parquet", [(0, 0, 0), (9, 9, 9)], [0, 1], metadata)
    _write_parquet(tmp_path / "test.parquet", [(0, 0, 0)], [1], metadata)
    assert load(f"parquet:{tmp_path}").num_classes == 5


def _save(path: Path, color: tuple[int, int, int], fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), color).save(path, format=fmt)


def test_imagefolder_reads_the_tiny_imagenet_layout(tmp_path: Path) -> None:
    _save(tmp_path / "train/n02/images/n02_0.png", (0, 0, 200))
    _save(tmp_path / "train/n01/images/n01_0.png", (200, 0, 0))
    _save(tmp_path / "train/n01/images/n01_1.JPEG", (100, 100, 100), fmt="JPEG")
    _save(tmp_path / "val/images/val_0.png", (0, 0, 200))
    _save(tmp_path / "val/images/val_1.png", (200, 0, 0))
    (tmp_path / "val/val_annotations.txt").write_text("val_0.png\tn02\t0\t0\t16\t16\nval_1.png\tn01\t0\t0\t16\t16\n")
    (tmp_path / "train/n01/n01_boxes.txt").write_text("not an image")
    bundle = load(f"imagefolder:{tmp_path}")
    assert bundle.num_classes == 2 and bundle.image_shape == (3, 16, 16)
    assert sorted(bundle.train.labels.tolist()) == [0, 0, 1]  # classes sorted: n01 -> 0, n02 -> 1
    assert bundle.test.labels.tolist() == [1, 0]
    assert bundle.test.images[0, :, 0, 0].tolist() == [0, 0, 200]
    assert (bundle.crop_padding, bundle.flip) == (2, True)


def test_imagefolder_reads_class_subfolders_under_val(tmp_path: Path) -> None:
    for name, color in (("cat", (1, 2, 3)), ("dog", (4, 5, 6))):
        _save(tmp_path / f"train/{name}/a.png", color)
        _save(tmp_path / f"val/{name}/b.jpg", color, fmt="JPEG")
    bundle = load(f"imagefolder:{tmp_path}")
    assert bundle.test.labels.tolist() == [0, 1] and len(bundle.train) == 2


def test_unknown_specs_and_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'; choose one of: digits, cifar10, .*parquet:DIR"):
        load("mnist")
    with pytest.raises(ValueError, match="unknown dataset 'parquet'"):
        load("parquet")
    with pytest.raises(ValueError, match="does not exist"):
        load(f"parquet:{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="does not exist"):
        load(f"imagefolder:{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match=r"no file matching '\*train\*.parquet'"):
        load(f"parquet:{tmp_path}")
    with pytest.raises(ValueError, match="no train/ folder"):
        load(f"imagefolder:{tmp_path}")
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\), got 1.0"):
        load("digits", val_fraction=1.0)
    with pytest.raises(ValueError, match=r"train_subset must be in \[1, 1438\] for 'digits', got 0"):
        load("digits", train_subset=0)
    with pytest.raises(ValueError, match=r"test_subset must be in \[1, 359\] for 'digits', got 360"):
        load("digits", test_subset=360)
