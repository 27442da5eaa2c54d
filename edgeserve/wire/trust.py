"""A second opinion on a classifier's answer: its nearest neighbours in a reference bank.

The trust score of Jiang, Kim, Guan & Gupta ("To Trust or Not to Trust a Classifier",
NeurIPS 2018), in the simple form that deep k-NN (Papernot & McDaniel) also uses: among
the ``k`` training examples closest to a request in the model's feature space, the share
whose label is the class the model predicted. It ranks the edge's errors far better
than any function of the softmax alone, because a digit drawn like a 7 but answered "1"
has 7s around it however sure the model is.

The router combines it with the top-class probability, ``w p + (1 - w) share``, so the
score stays in [0, 1], "higher = surer", and ties between the few values a k-NN share
can take are broken by the model's own confidence.

numpy only: the agent computes this on the device, where scikit-learn is not installed.
The bank is an ``.npz`` file (``x`` float32 [n, d], ``y`` int64 [n]) named and hashed in
the model card; :meth:`TrustBank.from_bytes` refuses bytes whose sha256 differs.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeserve.wire.confidence import top_class_confidence
from edgeserve.wire.errors import IntegrityError, InvalidInput

FloatArray = npt.NDArray[np.float32]
# Up to this k, one row's neighbours are found by repeated argmin, not argpartition.
_ARGMIN_K = 8


class TrustBank:
    """Reference examples and their labels, laid out for one matrix product per batch."""

    def __init__(self, features: npt.NDArray[Any], labels: npt.NDArray[Any], k: int) -> None:
        x = np.ascontiguousarray(features, dtype=np.float32)
        y = np.asarray(labels, dtype=np.int64)
        if x.ndim != 2 or y.shape != (len(x),):
            raise InvalidInput(f"bank shapes {x.shape} / {y.shape} do not pair up")
        if not 1 <= k <= len(x):
            raise InvalidInput(f"k = {k} for a bank of {len(x)} examples")
        self.labels = y
        self._label_list: list[int] = y.tolist()
        self.k = k
        # |x - b|^2 = |x|^2 - 2 x.b + |b|^2, and |x|^2 is the same for every b of one row,
        # so ranking needs only |b|^2 / 2 - x.b: one GEMM against the transposed bank.
        self._bank_t = np.ascontiguousarray(x.T)
        self._half_norms = 0.5 * np.einsum("ij,ij->i", x, x)

    @property
    def rows(self) -> int:
        return len(self.labels)

    @property
    def features(self) -> int:
        return int(self._bank_t.shape[0])

    @classmethod
    def from_bytes(cls, data: bytes, sha256: str, k: int) -> TrustBank:
        """The bank in ``data`` after checking it against the sha256 its card names."""
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise IntegrityError(f"bank sha256 {digest[:12]}… does not match card {sha256[:12]}…")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                return cls(archive["x"], archive["y"], k)
        except (OSError, KeyError, ValueError) as exc:
            raise IntegrityError(f"bank is not a readable npz of x and y: {exc}") from exc

    def neighbour_share(self, x: npt.NDArray[Any], predicted: npt.NDArray[Any]) -> Any:
        """Per row, the share of its ``k`` nearest bank examples labelled ``predicted``."""
        rows = np.asarray(x, dtype=np.float32).reshape(len(predicted), -1)
        if rows.shape[1] != self.features:
            raise InvalidInput(f"{rows.shape[1]} features for a bank of {self.features}")
        distance = self._half_norms - rows @ self._bank_t
        if len(rows) == 1 and self.k <= _ARGMIN_K:
            return np.array([self._one_row_share(distance[0], int(predicted[0]))])
        nearest = np.argpartition(distance, self.k - 1, axis=1)[:, : self.k]
        agree = self.labels[nearest] == np.asarray(predicted)[:, None]
        return agree.mean(axis=1)

    def _one_row_share(self, distance: npt.NDArray[Any], predicted: int) -> float:
        """k argmin passes: for one row and small k, ~4x faster than argpartition's
        introselect on a thousand distances (the batch-1 request is the common one)."""
        agree = 0
        for _ in range(self.k):
            nearest = int(distance.argmin())
            agree += self._label_list[nearest] == predicted
            distance[nearest] = np.inf
        return agree / self.k


def trust_scores(
    logits: npt.NDArray[Any],
    temperature: float,
    features: npt.NDArray[Any],
    bank: TrustBank,
    weight: float,
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """Per row, the top class and ``weight p1 + (1 - weight) share`` in [0, 1]."""
    top, confidence = top_class_confidence(logits, temperature)
    share = bank.neighbour_share(features, top)
    return top, weight * confidence + (1.0 - weight) * share


def bank_bytes(features: npt.NDArray[Any], labels: npt.NDArray[Any]) -> bytes:
    """The npz bytes of a bank, identical for identical arrays (fixed zip timestamps)."""
    import zipfile

    buffer = io.BytesIO()
    arrays: dict[str, npt.NDArray[Any]] = {
        "x": np.ascontiguousarray(features, dtype=np.float32),
        "y": np.ascontiguousarray(labels, dtype=np.int64),
    }
    with zipfile.ZipFile(buffer, mode="w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, array in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            member = io.BytesIO()
            np.lib.format.write_array(member, array, allow_pickle=False)
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()
