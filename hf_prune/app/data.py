"""Data sets: the embedded digits set (no network), Hub data sets and local image folders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import HfPruneError
from .preprocessing import ImageTransforms, Transform

DIGITS_MEAN, DIGITS_STD = 0.5, 0.5


class DigitsDataset(Dataset):
    """scikit-learn's bundled handwritten digits (8×8, 10 classes), resized for vision models.

    Items are ``{"pixel_values": (C, S, S) float tensor, "labels": int}``, the layout
    ``transformers.Trainer`` and image classifiers expect.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        return {"pixel_values": self.images[i], "labels": int(self.labels[i])}

    @property
    def num_classes(self) -> int:
        return 10


@dataclass
class DigitsSplits:
    train: DigitsDataset
    test: DigitsDataset


def load_digits(image_size: int = 32, num_channels: int = 3, test_fraction: float = 0.2, seed: int = 0,
                limit: int | None = None) -> DigitsSplits:
    """The 1,797 digits, normalized and resized to ``image_size``, split by a seeded stratified shuffle."""
    from sklearn.datasets import load_digits as sk_digits

    data = sk_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = ((x - DIGITS_MEAN) / DIGITS_STD).expand(-1, num_channels, -1, -1).contiguous()
    y = torch.tensor(data.target, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = (y == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = round(len(idx) * test_fraction)
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train = torch.cat(train_idx)[torch.randperm(sum(len(i) for i in train_idx), generator=g)]
    test = torch.cat(test_idx)
    if limit is not None:
        train, test = train[:limit], test[: max(1, round(limit * test_fraction))]
    return DigitsSplits(DigitsDataset(x[train], y[train]), DigitsDataset(x[test], y[test]))


class DataLoadError(HfPruneError):
    """A data set named by a recipe cannot be loaded."""


@dataclass
class TrainEvalData:
    train: Dataset
    eval: Dataset | None
    num_classes: int
    labels: list[str]


def _pick(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, where: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise DataLoadError(f"{where}: no {what} column {wanted!r}; columns are {columns}")
        return wanted
    for c in candidates:
        if c in columns:
            return c
    raise DataLoadError(f"{where}: cannot find the {what} column among {columns}; set data.{what}_column")


def _with_transform(ds, image_col: str, label_col: str, transform: Transform):
    """``ds`` transformed lazily, batch by batch as it is read (``datasets``' ``with_transform``)."""

    def apply(batch):
        return {"pixel_values": [transform(img.convert("RGB")) for img in batch[image_col]], "labels": batch[label_col]}

    return ds.with_transform(apply)


def load_image_data(source: str, transforms: ImageTransforms, *, name: str | None = None, path: str | None = None,
                    train_split: str = "train", eval_split: str | None = "test", image_column: str | None = None,
                    label_column: str | None = None, limit: int | None = None) -> TrainEvalData:
    """Train/eval data sets yielding ``{"pixel_values", "labels"}`` from a recipe's data section.

    ``source``: ``digits`` (embedded, already tensors at ``transforms.image_size``), ``hub``
    (``datasets.load_dataset(name)``) or ``imagefolder`` (``datasets``' imagefolder builder over ``path``, one
    sub-folder per class). Images go through ``transforms.train`` / ``transforms.eval`` as they are read.
    """
    if source == "digits":
        splits = load_digits(image_size=transforms.image_size, limit=limit)
        return TrainEvalData(splits.train, splits.test, 10, [str(i) for i in range(10)])
    import datasets

    where = f"data set {name!r}" if source == "hub" else f"image folder {path!r}"
    try:
        if source == "hub":
            ds = datasets.load_dataset(name)
        else:
            if path is None or not Path(path).expanduser().is_dir():
                raise DataLoadError(f"{where} does not exist")
            ds = datasets.load_dataset("imagefolder", data_dir=str(Path(path).expanduser()))
    except DataLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - network / missing data set: re-raised with the name
        raise DataLoadError(f"cannot load {where}: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e
    if train_split not in ds:
        raise DataLoadError(f"{where}: no split {train_split!r}; splits are {list(ds)}")
    train = ds[train_split]
    if eval_split is not None and eval_split not in ds:
        if source != "imagefolder":
            raise DataLoadError(f"{where}: no split {eval_split!r}; splits are {list(ds)}")
        parts = train.train_test_split(test_size=0.2, seed=0, stratify_by_column=None)
        train, evaluation = parts["train"], parts["test"]
    else:
        evaluation = ds[eval_split] if eval_split is not None else None
    columns = train.column_names
    image_col = _pick(columns, image_column, ("image", "img", "pixel_values"), "image", where)
    label_col = _pick(columns, label_column, ("label", "labels", "fine_label"), "label", where)
    feature = train.features[label_col]
    label_names = list(getattr(feature, "names", None) or sorted({str(v) for v in train[label_col]}))
    if limit is not None:
        train = train.select(range(min(limit, len(train))))
    train = _with_transform(train, image_col, label_col, transforms.train)
    evaluation = _with_transform(evaluation, image_col, label_col, transforms.eval) if evaluation is not None else None
    return TrainEvalData(train, evaluation, len(label_names), label_names)
