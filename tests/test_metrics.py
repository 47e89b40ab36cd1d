"""Calibration error, pooled and per task, against hand-computed values."""

import pytest
import torch

import hvi


def test_pooled_ece_matches_hand_computation():
    # Confidences 0.9 (right), 0.62 (right), 0.68 (wrong), 0.35 (wrong, class 1 of 3).
    probs = torch.tensor([[[0.9, 0.05, 0.05], [0.62, 0.3, 0.08]], [[0.68, 0.3, 0.02], [0.33, 0.35, 0.32]]],
                         dtype=torch.float64)
    y = torch.tensor([[0, 0], [1, 0]])
    # 10 bins: 0.9 alone (gap 0.1); 0.62 and 0.68 share [0.6, 0.7) (|1.30 − 1| = 0.3); 0.35 alone (0.35).
    want = (0.1 + 0.3 + 0.35) / 4
    assert float(hvi.calibration_error(probs, y, bins=10)) == pytest.approx(want, abs=1e-12)
    # One bin: |mean confidence − accuracy| = |2.55/4 − 2/4|.
    assert float(hvi.calibration_error(probs, y, bins=1)) == pytest.approx(abs(2.55 - 2) / 4, abs=1e-12)


def test_pooled_ece_of_a_calibrated_forecaster_is_small():
    g = torch.Generator().manual_seed(0)
    conf = torch.rand(200_000, generator=g, dtype=torch.float64) * 0.5 + 0.5
    right = torch.rand(200_000, generator=g, dtype=torch.float64) < conf
    probs = torch.stack([conf, 1 - conf], -1)
    y = torch.where(right, 0, 1)
    assert float(hvi.calibration_error(probs, y)) < 0.01
    y_wrong = torch.where(torch.rand(200_000, generator=g, dtype=torch.float64) < 0.5, 0, 1)
    assert float(hvi.calibration_error(probs, y_wrong)) == pytest.approx(0.25, abs=0.01)


def test_per_task_ece_is_the_pooled_ece_of_each_tasks_observed_labels():
    """classification_metrics' per-task ECE (with a mask) and calibration_error share one binning."""
    from hvi.predict import Prediction

    probs = torch.tensor([[[0.9, 0.05, 0.05], [0.62, 0.3, 0.08], [0.5, 0.4, 0.1]],
                          [[0.68, 0.3, 0.02], [0.33, 0.35, 0.32], [0.15, 0.75, 0.1]]], dtype=torch.float64)
    y = torch.tensor([[0, 0, 1], [1, 0, 1]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    pred = Prediction(mean=probs.argmax(-1), std=None, probs=probs, samples=probs[None])
    ece = hvi.classification_metrics(pred, y, bins=10, mask=mask)["ece"]
    # Task 0 (0.9 right, 0.62 right; 0.5 masked): (0.1 + 0.38) / 2.
    # Task 1 (0.68 wrong, 0.35 wrong, 0.75 right, each alone in its bin): (0.68 + 0.35 + 0.25) / 3.
    assert ece.tolist() == pytest.approx([(0.1 + 0.38) / 2, (0.68 + 0.35 + 0.25) / 3], abs=1e-12)
    for b in range(2):
        keep = mask[b]
        assert float(ece[b]) == pytest.approx(float(hvi.calibration_error(probs[b][keep], y[b][keep], bins=10)),
                                              abs=1e-15)
