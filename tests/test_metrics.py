"""Tests for forgetlab.metrics against hand-computed values.

Every expected number below was worked out by hand from the matrix next to it (the
arithmetic is in the comments), not by re-running the formulas.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from forgetlab.errors import ForgetlabError
from forgetlab.metrics import (
    aggregate_metrics,
    aggregate_seeds,
    classification_scores,
    continual_metrics,
    learned_test,
    learning_flags,
    majority_baseline,
    matrix_csv_text,
    metrics_from_csv,
    read_matrix_csv,
)

approx = pytest.approx

# Rows: base, stage1, stage2, stage3. Columns: task1, task2, task3.
FORGETTING = [
    [0.50, 0.40, 0.30],
    [0.90, 0.45, 0.35],
    [0.80, 0.85, 0.40],
    [0.70, 0.75, 0.95],
]


def test_three_tasks_with_forgetting():
    m = continual_metrics(FORGETTING)
    # acc = (0.70 + 0.75 + 0.95) / 3 = 2.40 / 3
    assert m["acc"] == approx(0.80)
    # initial = (0.90 + 0.85 + 0.95) / 3 = 2.70 / 3
    assert m["initial_acc"] == approx(0.90)
    # forgetting: task1 0.90 - 0.70 = 0.20, task2 0.85 - 0.75 = 0.10
    assert m["avg_forgetting"] == approx(0.15)
    assert m["max_forgetting"] == approx(0.20)
    # chaudhry: task1 max(0.90, 0.80) - 0.70 = 0.20, task2 max(0.45, 0.85) - 0.75 = 0.10
    assert m["chaudhry_forgetting"] == approx(0.15)
    assert m["bwt"] == approx(-0.15)
    # fwt: task2 0.45 - 0.40 = 0.05, task3 0.40 - 0.30 = 0.10 -> 0.075
    assert m["fwt"] == approx(0.075)

    per_task = m["per_task"]
    assert [p["task"] for p in per_task] == [1, 2, 3]
    assert [p["learned_acc"] for p in per_task] == approx([0.90, 0.85, 0.95])
    assert [p["final_acc"] for p in per_task] == approx([0.70, 0.75, 0.95])
    assert [p["base_acc"] for p in per_task] == approx([0.50, 0.40, 0.30])
    assert [p["gain"] for p in per_task] == approx([0.40, 0.45, 0.65])
    assert per_task[0]["forgetting"] == approx(0.20)
    assert per_task[1]["forgetting"] == approx(0.10)
    assert per_task[2]["forgetting"] is None


def test_results_are_plain_python_floats():
    m = continual_metrics(np.array(FORGETTING))
    for key in ("acc", "initial_acc", "avg_forgetting", "bwt", "fwt"):
        assert type(m[key]) is float
    assert type(m["per_task"][0]["gain"]) is float


def test_negative_forgetting_is_positive_backward_transfer():
    R = [
        [0.5, 0.5],
        [0.7, 0.5],
        [0.8, 0.9],  # stage 2 improved task 1 from 0.7 to 0.8
    ]
    m = continual_metrics(R)
    assert m["acc"] == approx(0.85)  # (0.8 + 0.9) / 2
    assert m["initial_acc"] == approx(0.80)  # (0.7 + 0.9) / 2
    assert m["avg_forgetting"] == approx(-0.10)  # 0.7 - 0.8
    assert m["max_forgetting"] == approx(-0.10)
    assert m["chaudhry_forgetting"] == approx(-0.10)  # max over l=1..1 is R[1][1] = 0.7
    assert m["bwt"] == approx(0.10)
    assert m["fwt"] == approx(0.0)  # R[1][2] - R[0][2] = 0.5 - 0.5
    assert m["per_task"][0]["forgetting"] == approx(-0.10)


def test_fwt_with_nontrivial_base_row():
    R = [
        [0.60, 0.20, 0.70],
        [0.80, 0.35, 0.65],  # before task2: 0.35 vs base 0.20 -> +0.15
        [0.75, 0.90, 0.50],  # before task3: 0.50 vs base 0.70 -> -0.20
        [0.70, 0.85, 0.80],
    ]
    m = continual_metrics(R)
    assert m["fwt"] == approx(-0.025)  # (0.15 - 0.20) / 2
    assert [p["gain"] for p in m["per_task"]] == approx([0.20, 0.70, 0.10])


def test_chaudhry_differs_when_task_peaks_after_its_own_stage():
    R = [
        [0.5, 0.5, 0.5],
        [0.6, 0.5, 0.5],
        [0.9, 0.8, 0.5],  # task1 peaks at stage 2, after its own stage
        [0.7, 0.6, 0.9],
    ]
    m = continual_metrics(R)
    # avg: task1 0.6 - 0.7 = -0.1, task2 0.8 - 0.6 = 0.2 -> 0.05
    assert m["avg_forgetting"] == approx(0.05)
    assert m["max_forgetting"] == approx(0.20)
    # chaudhry: task1 max(0.6, 0.9) - 0.7 = 0.2, task2 max(0.5, 0.8) - 0.6 = 0.2 -> 0.2
    assert m["chaudhry_forgetting"] == approx(0.20)
    assert m["bwt"] == approx(-0.05)


def test_chaudhry_ignores_the_base_row():
    R = [
        [0.95, 0.2],  # base is best on task1; must not count
        [0.60, 0.3],
        [0.50, 0.8],
    ]
    m = continual_metrics(R)
    assert m["chaudhry_forgetting"] == approx(0.10)  # 0.60 - 0.50, not 0.95 - 0.50
    assert m["avg_forgetting"] == approx(0.10)
    assert m["fwt"] == approx(0.10)  # 0.3 - 0.2
    assert m["per_task"][0]["gain"] == approx(-0.35)  # 0.60 - 0.95


def test_single_task():
    m = continual_metrics([[0.5], [0.8]])
    assert m["acc"] == approx(0.8)
    assert m["initial_acc"] == approx(0.8)
    for key in ("avg_forgetting", "max_forgetting", "chaudhry_forgetting", "bwt", "fwt"):
        assert m[key] is None
    (p,) = m["per_task"]
    assert p["gain"] == approx(0.3)
    assert p["forgetting"] is None


@pytest.mark.parametrize(
    "R",
    [
        [[0.5, 0.5], [0.6, 0.6]],  # 2x2: missing a row
        [[0.5], [0.6], [0.7]],  # 3x1
        [0.5, 0.6],  # 1-D
        [[0.5, 0.5], [0.6], [0.7, 0.7]],  # ragged
        np.zeros((1, 0)),  # no tasks
    ],
)
def test_bad_shape_raises(R):
    with pytest.raises(ForgetlabError, match="shape|ragged"):
        continual_metrics(R)


def test_nan_and_out_of_range_raise():
    with pytest.raises(ForgetlabError, match="non-finite.*row 1.*task 2"):
        continual_metrics([[0.5, 0.5], [0.6, float("nan")], [0.7, 0.7]])
    with pytest.raises(ForgetlabError, match="outside"):
        continual_metrics([[50.0, 50.0], [60.0, 60.0], [70.0, 70.0]])
    with pytest.raises(ForgetlabError):
        continual_metrics([["a", 0.5], [0.6, 0.6], [0.7, 0.7]])


def test_majority_baseline():
    assert majority_baseline([0, 1, 1, 1]) == 0.75
    assert majority_baseline([2, 2, 0, 1, 2]) == 0.6
    with pytest.raises(ForgetlabError):
        majority_baseline([])


def test_learned_test_exact_small_values():
    # 10/10 vs 0.5: P(X >= 10) = 1/1024
    r = learned_test(1.0, 10, 0.5)
    assert r["p_value"] == approx(1 / 1024)
    assert r["learned"] is True
    assert r["test"] == "one-sided exact binomial vs majority baseline"
    assert r["alpha"] == 0.05
    # 9/10 vs 0.5: P(X >= 9) = (10 + 1) / 1024
    r = learned_test(0.9, 10, 0.5)
    assert r["k"] == 9
    assert r["p_value"] == approx(11 / 1024)
    assert r["learned"] is True
    assert learned_test(0.9, 10, 0.5, alpha=0.01)["learned"] is False
    # 6/10 vs 0.5: P(X >= 6) = (210 + 120 + 45 + 10 + 1) / 1024 = 386 / 1024
    assert learned_test(0.6, 10, 0.5)["p_value"] == approx(386 / 1024)


def test_learned_test_277_examples():
    # 150/277 vs 0.5: normal approx with continuity correction, mean 138.5,
    # sd = sqrt(277/4) = 8.322, z = (149.5 - 138.5) / 8.322 = 1.32 -> p ~ 0.093
    r = learned_test(150 / 277, 277, 0.5)
    assert 0.08 < r["p_value"] < 0.11
    assert r["learned"] is False
    # 200/277: z = (199.5 - 138.5) / 8.322 = 7.3 -> p ~ 1e-13
    r = learned_test(200 / 277, 277, 0.5)
    assert r["p_value"] < 1e-10
    assert r["learned"] is True
    # at or below the baseline is never "learned"
    assert learned_test(0.5, 277, 0.5)["learned"] is False
    assert learned_test(0.4, 277, 0.5)["p_value"] > 0.99


def test_learned_test_bad_input():
    with pytest.raises(ForgetlabError):
        learned_test(0.5, 0, 0.5)
    with pytest.raises(ForgetlabError):
        learned_test(1.5, 10, 0.5)
    with pytest.raises(ForgetlabError):
        learned_test(0.5, 10, 0.5, alpha=0.0)


LEARN = [
    [0.5, 0.5, 0.5],
    [0.9, 0.5, 0.5],
    [0.8, 1.0, 0.5],
    [0.7, 0.9, 0.6],
]


def test_learning_flags():
    flags = learning_flags(LEARN, majority=[0.5, 0.5, 0.5], n_eval=[10, 10, 10])
    assert [f["task"] for f in flags] == [1, 2, 3]
    assert [f["p_value"] for f in flags] == approx([11 / 1024, 1 / 1024, 386 / 1024])
    assert [f["learned"] for f in flags] == [True, True, False]
    assert [f["majority_baseline"] for f in flags] == [0.5, 0.5, 0.5]
    assert [f["above_majority"] for f in flags] == approx([0.4, 0.5, 0.1])
    with pytest.raises(ForgetlabError, match="one majority baseline"):
        learning_flags(LEARN, majority=[0.5, 0.5], n_eval=[10, 10, 10])


def test_classification_scores():
    labels = [1, 1, 0, 0]
    preds = [1, 0, 0, 0]  # TP=1 FN=1 TN=2 FP=0
    assert classification_scores(preds, labels) == {"accuracy": 0.75}
    s = classification_scores(preds, labels, extras=("mcc", "f1"))
    # mcc = (1*2 - 0*1) / sqrt((1+0)(1+1)(2+0)(2+1)) = 2 / sqrt(12)
    assert s["mcc"] == approx(2 / math.sqrt(12))
    # f1 = 2*1 / (2*1 + 0 + 1) = 2/3
    assert s["f1"] == approx(2 / 3)
    assert s["accuracy"] == 0.75


def test_classification_scores_undefined_cases():
    s = classification_scores([1, 1, 1, 1], [1, 1, 0, 0], extras=["mcc"])
    assert s["mcc"] == 0.0  # constant prediction: MCC undefined -> 0.0
    s = classification_scores([0, 0], [0, 0], extras=["f1", "mcc"])
    assert s["f1"] == 0.0  # no positives anywhere: zero_division=0
    assert s["mcc"] == 0.0
    assert s["accuracy"] == 1.0
    with pytest.raises(ForgetlabError, match="unknown extra"):
        classification_scores([0], [0], extras=["auc"])
    with pytest.raises(ForgetlabError):
        classification_scores([0, 1], [0], extras=())
    with pytest.raises(ForgetlabError):
        classification_scores([], [])


def test_aggregate_seeds():
    a = aggregate_seeds([0.5, 0.6, 0.7])
    assert a["mean"] == approx(0.6)
    assert a["std"] == approx(0.1)  # sqrt((0.01 + 0 + 0.01) / 2)
    # t_{0.975,2} * std / sqrt(3) = 4.302653 * 0.1 / 1.732051
    assert a["ci95"] == approx(0.24841, abs=1e-5)
    assert a["n"] == 3
    assert a["values"] == approx([0.5, 0.6, 0.7])


def test_aggregate_seeds_one_none_and_missing():
    one = aggregate_seeds([0.42])
    assert one["mean"] == approx(0.42)
    assert one["std"] == 0.0
    assert one["ci95"] is None
    assert one["n"] == 1

    two = aggregate_seeds([0.5, None, 0.7])
    assert two["n"] == 2
    assert two["mean"] == approx(0.6)
    assert two["std"] == approx(math.sqrt(0.02))  # (0.01 + 0.01) / 1
    # t_{0.975,1} = 12.706205; 12.706205 * 0.141421 / 1.414214 = 1.2706205
    assert two["ci95"] == approx(1.2706205, abs=1e-6)
    assert two["values"][1] is None

    none = aggregate_seeds([None, None])
    assert none["mean"] is None and none["n"] == 0 and none["ci95"] is None
    assert aggregate_seeds([])["mean"] is None

    with pytest.raises(ForgetlabError):
        aggregate_seeds([0.5, float("nan")])


def test_aggregate_metrics():
    seeds = [
        {"acc": 0.5, "fwt": None, "per_task": [{"gain": 0.1}], "note": "x", "flag": True},
        {"acc": 0.6, "fwt": None, "per_task": [{"gain": 0.2}], "note": "y", "flag": False},
        {"acc": 0.7, "fwt": None, "per_task": [], "note": "z", "flag": True, "extra": 1},
    ]
    agg = aggregate_metrics(seeds)
    assert set(agg) == {"acc", "fwt", "extra"}
    assert agg["acc"]["mean"] == approx(0.6)
    assert agg["acc"]["ci95"] == approx(0.24841, abs=1e-5)
    assert agg["fwt"]["mean"] is None and agg["fwt"]["n"] == 0
    assert agg["extra"]["n"] == 1  # missing in two seeds

    # real continual_metrics dicts: all scalar keys present
    per_seed = [continual_metrics(FORGETTING), continual_metrics(LEARN)]
    agg = aggregate_metrics(per_seed)
    assert list(agg) == [
        "acc",
        "initial_acc",
        "avg_forgetting",
        "max_forgetting",
        "chaudhry_forgetting",
        "bwt",
        "fwt",
    ]
    # acc: FORGETTING 0.80, LEARN (0.7 + 0.9 + 0.6) / 3 = 0.7333 -> mean 0.76667
    assert agg["acc"]["mean"] == approx(0.766667, abs=1e-6)


# ------------------------------------------------------------------- CSV


def test_csv_round_trip_without_baseline_rows(tmp_path):
    text = matrix_csv_text(["sst2", "cola", "rte"], FORGETTING)
    assert text.splitlines()[0] == "stage,sst2,cola,rte"
    assert text.splitlines()[1] == "base,0.5,0.4,0.3"
    assert text.splitlines()[-1] == "stage3,0.7,0.75,0.95"
    path = tmp_path / "accuracy_matrix.csv"
    path.write_text(text)

    tasks, R, extras = read_matrix_csv(path)
    assert tasks == ["sst2", "cola", "rte"]
    assert R.tolist() == FORGETTING
    assert extras["row_labels"] == ["base", "stage1", "stage2", "stage3"]
    assert extras["majority_baseline"] is None and extras["n_eval"] is None

    result = metrics_from_csv(path)
    assert result["tasks"] == tasks
    assert result["accuracy_matrix"] == FORGETTING
    assert result["acc"] == approx(0.80)
    assert result["chaudhry_forgetting"] == approx(0.15)
    assert result["learning"] is None
    assert "majority_baseline" in result["note"] and "n_eval" in result["note"]


def test_csv_round_trip_with_baseline_rows(tmp_path):
    text = matrix_csv_text(
        ["a", "b", "c"],
        LEARN,
        row_labels=["pre", "s1", "s2", "s3"],
        majority_baseline=[0.5, 0.5, 0.5],
        n_eval=[10, 10, 10],
    )
    assert text.splitlines()[-2:] == ["majority_baseline,0.5,0.5,0.5", "n_eval,10,10,10"]
    path = tmp_path / "m.csv"
    path.write_text(text)

    tasks, R, extras = read_matrix_csv(path)
    assert R.tolist() == LEARN
    assert extras["row_labels"] == ["pre", "s1", "s2", "s3"]
    assert extras["majority_baseline"] == [0.5, 0.5, 0.5]
    assert extras["n_eval"] == [10, 10, 10]

    result = metrics_from_csv(path)
    assert "note" not in result
    assert [f["learned"] for f in result["learning"]] == [True, True, False]
    assert result["learning"][0]["p_value"] == approx(11 / 1024)


def test_csv_only_one_baseline_row_gives_note(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(matrix_csv_text(["a", "b", "c"], LEARN, majority_baseline=[0.5] * 3))
    result = metrics_from_csv(path)
    assert result["learning"] is None
    assert "'n_eval' missing" in result["note"]


def test_csv_without_label_column(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("t1,t2\n0.5,0.5\n0.7,0.5\n0.8,0.9\n\nmajority_baseline,0.5,0.5\nn_eval,10,10\n")
    tasks, R, extras = read_matrix_csv(path)
    assert tasks == ["t1", "t2"]
    assert R.tolist() == [[0.5, 0.5], [0.7, 0.5], [0.8, 0.9]]
    assert extras["row_labels"] is None
    assert extras["n_eval"] == [10, 10]
    result = metrics_from_csv(path)
    assert result["bwt"] == approx(0.10)
    assert len(result["learning"]) == 2


def test_csv_numeric_row_labels_and_whitespace(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("\ufeffstage, t1 , t2,\n0, 0.5,0.5\n1,0.7,0.5,\n2,0.8,0.9\n")
    tasks, R, extras = read_matrix_csv(path)
    assert tasks == ["t1", "t2"]
    assert R.tolist() == [[0.5, 0.5], [0.7, 0.5], [0.8, 0.9]]
    assert extras["row_labels"] == ["0", "1", "2"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("stage,a,b\nbase,0.5,0.5\nstage1,0.7,oops\nstage2,0.8,0.9\n", "line 3.*'b'.*'oops'"),
        ("stage,a,b\nbase,0.5,0.5\nstage1,0.7,0.5\n", "expected T\\+1 = 3 matrix rows.*found 2"),
        (
            "stage,a,b\nbase,0.5,0.5\ns1,0.7,0.5\ns2,0.8,0.9\ns3,0.8,0.9\n",
            "expected T\\+1 = 3.*found 4",
        ),
        ("stage,a,b\nbase,0.5,0.5\nstage1,0.7\nstage2,0.8,0.9\n", "line 3.*1 values, expected 2"),
        ("stage,a,b\nbase,0.5,0.5\nstage1,0.7,nan\nstage2,0.8,0.9\n", "line 3.*'b'.*'nan'"),
        ("stage,a,b\nbase,50,50\nstage1,70,50\nstage2,80,90\n", "line 2.*'a'.*percentages"),
        (
            "stage,a,b\nbase,0.5,0.5\nstage1,0.7,0.5\nstage2,0.8,0.9\nn_eval,10,2.5\n",
            "line 5.*'b'.*whole number",
        ),
        (
            "stage,a,b\nbase,0.5,0.5\nstage1,0.7,0.5\nstage2,0.8,0.9\nmajority_baseline,0.5\n",
            "line 5.*1 values",
        ),
        ("stage,a,a\nbase,0.5,0.5\nstage1,0.7,0.5\nstage2,0.8,0.9\n", "duplicate task"),
        ("t1,t2\n0.5x,0.5\n0.7,0.5\n0.8,0.9\n", "line 2.*'t1'.*'0.5x'"),
        ("stage,a,b\nbase,0.5,\nstage1,0.7,0.5\nstage2,0.8,0.9\n", "line 2.*1 values"),
        ("", "empty file"),
        ("stage,a,b\n", "no matrix rows"),
    ],
)
def test_malformed_csv(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ForgetlabError, match=match):
        metrics_from_csv(path)


def test_missing_csv(tmp_path):
    with pytest.raises(ForgetlabError, match="not found"):
        metrics_from_csv(tmp_path / "nope.csv")


def test_matrix_csv_text_validates():
    with pytest.raises(ForgetlabError, match="task names"):
        matrix_csv_text(["a", "b"], FORGETTING)
    with pytest.raises(ForgetlabError, match="row labels"):
        matrix_csv_text(["a", "b", "c"], FORGETTING, row_labels=["x"])
    with pytest.raises(ForgetlabError, match="reserved"):
        matrix_csv_text(["a", "b", "c"], FORGETTING, row_labels=["n_eval", "1", "2", "3"])
