"""Data sets: the embedded digits set (no network), Hub data sets and local image folders."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

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
