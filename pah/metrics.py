"""Continual-learning metrics as pure functions of the accuracy matrix.

``R[i][j]`` is the test accuracy on task ``j`` after training through task ``i``
(``None`` for ``j > i``). All functions accept the lower-triangular matrix after any
number of tasks ``T >= 1``; with a single task there are no old tasks, so forgetting
and backward transfer are 0.0. None of them mutate their input.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["AccMatrix", "average_accuracy", "forgetting", "backward_transfer", "summarize"]

AccMatrix = Sequence[Sequence["float | None"]]


def _rows(R: AccMatrix) -> int:
    T = len(R)
    if T == 0:
        raise ValueError("empty accuracy matrix")
    for i, row in enumerate(R):
        if len(row) < i + 1 or any(row[j] is None for j in range(i + 1)):
            raise ValueError(f"row {i} of the accuracy matrix needs values for tasks 0..{i}")
    return T


def average_accuracy(R: AccMatrix) -> float:
    """ACC = mean_j R[T-1][j]."""
    T = _rows(R)
    return sum(float(R[T - 1][j]) for j in range(T)) / T  # type: ignore[arg-type]


def forgetting(R: AccMatrix) -> float:
    """Chaudhry et al. (2018): FM = mean_{j<T-1} (max_{l in [j, T-2]} R[l][j] - R[T-1][j])."""
    T = _rows(R)
    if T == 1:
        return 0.0
    drops = [max(float(R[k][j]) for k in range(j, T - 1)) - float(R[T - 1][j]) for j in range(T - 1)]  # type: ignore[arg-type]
    return sum(drops) / (T - 1)


def backward_transfer(R: AccMatrix) -> float:
    """Lopez-Paz & Ranzato (2017): BWT = mean_{j<T-1} (R[T-1][j] - R[j][j])."""
    T = _rows(R)
    if T == 1:
        return 0.0
    return sum(float(R[T - 1][j]) - float(R[j][j]) for j in range(T - 1)) / (T - 1)  # type: ignore[arg-type]


def summarize(R: AccMatrix) -> dict[str, float]:
    return {"avg_acc": average_accuracy(R), "forgetting": forgetting(R), "bwt": backward_transfer(R)}
