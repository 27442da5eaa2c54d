"""The digits data set and its fixed train / calibration / test split.

The split is written to ``.npz`` files so that runtimes (the edge agent, the demo, the
tests) can evaluate models on exactly the samples the build measured, with numpy alone.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

SplitName = Literal["calibration", "test"]
FloatArray = npt.NDArray[np.float32]
LabelArray = npt.NDArray[np.int64]
IndexArray = npt.NDArray[np.intp]

TEST_FRACTION = 0.30
CALIBRATION_FRACTION = 0.15
NUM_FEATURES = 64
NUM_CLASSES = 10
# Digits pixels are integers 0..16; dividing keeps every feature in [0, 1].
PIXEL_SCALE = 16.0
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
PREPROCESSING = "pixel values divided by 16, flattened row-major to 64 floats"


@dataclass(frozen=True)
class DigitsSplit:
    """The three disjoint parts of the digits data set, features already scaled."""

    x_train: FloatArray
    y_train: LabelArray
    x_calibration: FloatArray
    y_calibration: LabelArray
    x_test: FloatArray
    y_test: LabelArray
    # Row numbers into ``load_digits`` order, so callers can check provenance/disjointness.
    train_index: IndexArray
    calibration_index: IndexArray
    test_index: IndexArray


def split_file_name(split: SplitName) -> str:
    return f"digits-{split}.npz"


def load_digits_arrays() -> tuple[FloatArray, LabelArray]:
    """All 1797 digits as ``[N, 64]`` float32 features in [0, 1] and int64 labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / np.float32(PIXEL_SCALE)).astype(np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    return x, y


def make_split(seed: int = 0) -> DigitsSplit:
    """Stratified split: 30% test, 15% calibration, the rest train, all fixed by ``seed``."""
    from sklearn.model_selection import train_test_split

    x, y = load_digits_arrays()
    total = len(y)
    # Integer counts (not fractions) so the calibration size is 15% of the whole set,
    # not 15% of what is left after the test split.
    n_test = round(TEST_FRACTION * total)
    n_calibration = round(CALIBRATION_FRACTION * total)
    everything = np.arange(total)
    rest, test = train_test_split(everything, test_size=n_test, random_state=seed, stratify=y)
    train, calibration = train_test_split(
        rest, test_size=n_calibration, random_state=seed, stratify=y[rest]
    )
    return DigitsSplit(
        x_train=np.ascontiguousarray(x[train]),
        y_train=np.ascontiguousarray(y[train]),
        x_calibration=np.ascontiguousarray(x[calibration]),
        y_calibration=np.ascontiguousarray(y[calibration]),
        x_test=np.ascontiguousarray(x[test]),
        y_test=np.ascontiguousarray(y[test]),
        train_index=np.asarray(train, dtype=np.intp),
        calibration_index=np.asarray(calibration, dtype=np.intp),
        test_index=np.asarray(test, dtype=np.intp),
    )


def write_splits(split: DigitsSplit, folder: Path) -> list[Path]:
    """Write the calibration and test parts as compressed npz files; returns their paths.

    The files are ordinary ``.npz`` archives (arrays ``x`` float32 and ``y`` int64) that
    ``np.load`` reads; only the zip timestamps are pinned.
    """
    folder.mkdir(parents=True, exist_ok=True)
    parts: dict[SplitName, tuple[FloatArray, LabelArray]] = {
        "calibration": (split.x_calibration, split.y_calibration),
        "test": (split.x_test, split.y_test),
    }
    paths: list[Path] = []
    for name, (x, y) in parts.items():
        path = folder / split_file_name(name)
        _save_npz_deterministic(path, {"x": x, "y": y})
        paths.append(path)
    return paths


def _save_npz_deterministic(path: Path, arrays: dict[str, npt.NDArray[np.generic]]) -> None:
    """Same layout as ``np.savez_compressed`` but with a fixed zip timestamp.

    ``np.savez_compressed`` stamps every member with the current time, which would make a
    rebuild differ from the committed files byte for byte.
    """
    with zipfile.ZipFile(path, mode="w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, array in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            archive.writestr(info, buffer.getvalue())


def load_split(folder: Path, split: SplitName) -> tuple[FloatArray, LabelArray]:
    """Read one split written by :func:`write_splits`; needs numpy only."""
    with np.load(folder / split_file_name(split)) as archive:
        x = np.asarray(archive["x"], dtype=np.float32)
        y = np.asarray(archive["y"], dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != NUM_FEATURES or len(x) != len(y):
        raise ValueError(f"{split} split in {folder} has shapes {x.shape} / {y.shape}")
    return x, y
