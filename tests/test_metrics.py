import copy

import pytest

from pah.metrics import average_accuracy, backward_transfer, forgetting, summarize

# R[i][j]: accuracy on task j after training through task i
R = [
    [0.9, None, None],
    [0.7, 0.8, None],
    [0.6, 0.85, 0.95],
]


def test_average_accuracy_is_mean_of_last_row():
    assert average_accuracy(R) == pytest.approx((0.6 + 0.85 + 0.95) / 3)


def test_forgetting_uses_the_best_earlier_accuracy():
    # task 0: max(0.9, 0.7) - 0.6 = 0.3; task 1: max(0.8) - 0.85 = -0.05
    assert forgetting(R) == pytest.approx((0.3 - 0.05) / 2)


def test_backward_transfer_compares_with_just_learned():
    # task 0: 0.6 - 0.9 = -0.3; task 1: 0.85 - 0.8 = 0.05
    assert backward_transfer(R) == pytest.approx((-0.3 + 0.05) / 2)


def test_forgetting_and_bwt_differ_when_accuracy_peaks_later():
    M = [[0.5, None, None], [0.9, 0.8, None], [0.7, 0.8, 0.9]]
    assert forgetting(M) == pytest.approx(((0.9 - 0.7) + 0.0) / 2)
    assert backward_transfer(M) == pytest.approx(((0.7 - 0.5) + 0.0) / 2)


def test_single_task_has_no_forgetting():
    assert summarize([[0.75]]) == {"avg_acc": 0.75, "forgetting": 0.0, "bwt": 0.0}


def test_metrics_do_not_mutate_input():
    before = copy.deepcopy(R)
    summarize(R)
    assert R == before


def test_incomplete_row_is_rejected():
    with pytest.raises(ValueError, match="row 1"):
        average_accuracy([[0.9, None], [0.8, None]])
