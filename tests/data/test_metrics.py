"""Metrics against hand-computed values (percent)."""

import math

import pytest

from hyperscale.data import (accuracy, average_metrics, compute_task_metrics, count_invalid, f1,
                             matthews_corr, parse_prediction, pearson, spearman)


def test_plain_metrics_hand_computed():
    assert accuracy([1, 0, 1, 1], [1, 0, 0, 1]) == pytest.approx(75.0)
    # tp=1 fp=1 fn=1 -> P = R = 1/2 -> F1 = 1/2
    assert f1([1, 0, 1, 0], [1, 1, 0, 0]) == pytest.approx(50.0)
    # tp=1 tn=2 fp=1 fn=0 -> (1*2 - 1*0) / sqrt(2*1*3*2)
    assert matthews_corr([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(100 * 2 / math.sqrt(12))
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(100.0)
    # x = 1 2 3 4, y = 1 3 2 4: both coefficients are 0.8
    assert pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(80.0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(80.0)
    assert spearman([10, 20, 30, 40], [1, 2, 3, 5]) == pytest.approx(100.0)
    assert pearson([2, 2, 2], [1, 2, 3]) == 0.0  # undefined -> 0
    with pytest.raises(ValueError):
        accuracy([1], [1, 0])


def test_classification_postprocessing_whitespace_tolerant_otherwise_strict():
    assert parse_prediction("rte", " 1\n") == 1
    for bad in ["1.", "01", "one", "entailment", "", "1 0", "-1"]:
        assert parse_prediction("rte", bad) is None, bad
    assert parse_prediction("stsb", " 3.8 ") == 3.8
    assert parse_prediction("stsb", "nan") is None and parse_prediction("stsb", "high") is None


def test_rte_accuracy_counts_invalid_as_wrong():
    result = compute_task_metrics("rte", ["1", " 0 ", "maybe", "1"], ["1", "0", "0", "1"])
    assert result == {"acc": pytest.approx(75.0)}


def test_mrpc_f1_with_invalid_prediction():
    # invalid "x" with reference 1 counts as a wrong 0: tp=1 fn=1 fp=0 -> F1 = 2/3
    result = compute_task_metrics("mrpc", ["1", "x", "0", "0"], ["1", "1", "0", "0"])
    assert result["f1"] == pytest.approx(200 / 3)
    assert result["acc"] == pytest.approx(75.0)
    assert list(result) == ["f1", "acc"]
    # invalid with reference 0 counts as a false positive: tp=1 fp=1 -> F1 = 2/3
    assert compute_task_metrics("mrpc", ["1", "1", "?", "0"], ["1", "1", "0", "0"])["f1"] == \
        pytest.approx(100 * 2 * 2 / (2 * 2 + 1))


def test_cola_mcc_with_invalid_prediction():
    # "2" is invalid -> flipped to 1 against reference 0: same as the plain case above
    result = compute_task_metrics("cola", ["1", "2", "0", "0"], ["1", "0", "0", "0"])
    assert result == {"mcc": pytest.approx(100 * 2 / math.sqrt(12))}


def test_multiclass_invalid_counts_wrong():
    result = compute_task_metrics("cb", ["0", "2", "neutral", "1"], ["0", "2", "2", "0"])
    assert result == {"acc": pytest.approx(50.0)}


def test_stsb_correlations_and_invalid_floats():
    refs = ["1.0", "3.0", "2.0", "4.0"]
    result = compute_task_metrics("stsb", ["1", "2", "3", "4"], refs)
    assert result == {"pearson": pytest.approx(80.0), "spearman": pytest.approx(80.0)}
    # the invalid prediction scores 0.0: predictions 0, 2, 3, 4
    result = compute_task_metrics("stsb", ["oops", "2", "3", "4"], refs)
    assert result["spearman"] == pytest.approx(80.0)
    expected_pearson = pearson([0.0, 2, 3, 4], [1.0, 3.0, 2.0, 4.0])
    assert result["pearson"] == pytest.approx(expected_pearson)
    assert count_invalid("stsb", ["oops", "2", " 3 ", "inf"]) == 2
    assert compute_task_metrics("stsb", ["2.0"] * 4, refs) == {"pearson": 0.0, "spearman": 0.0}


def test_references_must_be_valid():
    with pytest.raises(ValueError, match="invalid reference"):
        compute_task_metrics("rte", ["1"], ["entailment"])
    with pytest.raises(ValueError, match="references"):
        compute_task_metrics("rte", ["1", "0"], ["1"])


def test_average_metrics():
    per_task = {"mrpc": {"f1": 80.0, "acc": 70.0}, "rte": {"acc": 60.0},
                "stsb": {"pearson": 90.0, "spearman": 88.0}}
    result = average_metrics(per_task)
    assert result["mean_all_metrics"] == pytest.approx((80 + 70 + 60 + 90 + 88) / 5)
    assert result["mean_over_tasks"] == pytest.approx((75 + 60 + 89) / 3)
    with pytest.raises(ValueError):
        average_metrics({})
