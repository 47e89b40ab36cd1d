"""The pure parts of benchmarks/reference_speed.py: the reference's output, its clock readings, the criteria."""

from __future__ import annotations

import pytest
from script_loader import load_script

rs = load_script("benchmarks/reference_speed.py", "hvi_bench_reference_speed")


def test_parse_reference_output():
    text = ("weights=109361 size=32 k_shot=5 inner_steps=5 first_order=False\n"
            "first_query_loss=0.3541 last_query_loss=0.2457\n"
            "s_per_task_median=0.8244 peak_rss_mb=445\n")
    out = rs.parse_reference_output(text)
    assert out == {"weights": 109361, "size": 32, "k_shot": 5, "inner_steps": 5, "first_order": False,
                   "first_query_loss": 0.3541, "last_query_loss": 0.2457, "s_per_task_median": 0.8244,
                   "peak_rss_mb": 445}


def test_per_task_times_pairs_readings_and_drops_warmup():
    marks = [(10.0, 1.0), (12.0, 2.5), (20.0, 3.0), (21.0, 3.75), (30.0, 4.0), (30.5, 4.25)]
    t = rs.per_task_times(marks)
    assert t == {"wall": [1.0, 0.5], "cpu": [0.75, 0.25]}
    with pytest.raises(ValueError, match="two clock readings"):
        rs.per_task_times(marks[:-1])


def test_rates_are_medians():
    rows = [{"tasks_per_s": 1.0, "tasks_per_cpu_s": 4.0}, {"tasks_per_s": 3.0, "tasks_per_cpu_s": 2.0},
            {"tasks_per_s": 2.0, "tasks_per_cpu_s": 9.0}]
    assert rs.rates(rows) == {"tasks_per_s": 2.0, "tasks_per_cpu_s": 4.0}


def test_judge_uses_best_batches_and_thresholds():
    summary = {
        "reference_2nd": {"tasks_per_cpu_s": 2.0, "tasks_per_s": 1.0},
        "reference_1st": {"tasks_per_cpu_s": 5.0, "tasks_per_s": 2.5},
        "engine_2nd_B8": {"tasks_per_cpu_s": 4.5, "tasks_per_s": 2.0, "gflop_per_task": 10.0},
        "engine_2nd_B4": {"tasks_per_cpu_s": 3.0, "tasks_per_s": 3.0, "gflop_per_task": 10.0},
        "engine_1st_B8": {"tasks_per_cpu_s": 8.0, "tasks_per_s": 4.0, "gflop_per_task": 3.0},
        "naive_2nd_B1": {"tasks_per_cpu_s": 1.5, "tasks_per_s": 1.0},
        "naive_2nd_B8": {"tasks_per_cpu_s": 2.5, "tasks_per_s": 0.5},
    }
    matmul = {"gflop_per_cpu_s": 100.0, "gflop_per_s": 50.0}
    c = rs.judge(summary, matmul)
    assert c["engine_2nd_vs_reference_2nd"] == {"ratio": 2.25, "threshold": 2.0, "met": True,
                                                "of": ["engine_2nd_B8", "reference_2nd"]}
    assert c["engine_2nd_vs_best_naive_2nd"]["ratio"] == 1.8  # 4.5 / 2.5, naive's best batch is 8
    assert not c["engine_2nd_vs_best_naive_2nd"]["met"]
    assert c["engine_2nd_gflop_share_of_matmul"]["ratio"] == 0.45 and not c["engine_2nd_gflop_share_of_matmul"]["met"]
    assert c["engine_1st_vs_reference_2nd"]["ratio"] == 4.0 and not c["engine_1st_vs_reference_2nd"]["met"]
    w = rs.judge(summary, matmul, "tasks_per_s")  # on wall rates the best engine batch is 4, naive's is 1
    assert w["engine_2nd_vs_reference_2nd"]["of"] == ["engine_2nd_B4", "reference_2nd"]
    assert w["engine_2nd_vs_best_naive_2nd"]["ratio"] == 3.0
    assert w["engine_2nd_gflop_share_of_matmul"]["ratio"] == 0.6 and w["engine_2nd_gflop_share_of_matmul"]["met"]


def test_per_round_ratios_pair_each_round():
    criteria = {"engine_2nd_vs_reference_2nd": {"of": ["engine_2nd_B8", "reference_2nd"]},
                "engine_2nd_gflop_share_of_matmul": {"of": ["engine_2nd_B8", "matmul"]}}
    runs = {"engine_2nd_B8": [{"tasks_per_cpu_s": 4.0}, {"tasks_per_cpu_s": 3.0}, {"tasks_per_cpu_s": 5.0}],
            "reference_2nd": [{"tasks_per_cpu_s": 2.0}, {"tasks_per_cpu_s": 1.0}, {"tasks_per_cpu_s": 2.5}]}
    matmuls = [{"gflop_per_cpu_s": 100.0}, {"gflop_per_cpu_s": 60.0}, {"gflop_per_cpu_s": 100.0}]
    r = rs.per_round(criteria, runs, matmuls, {"engine_2nd_B8": 10.0})
    assert r["engine_2nd_vs_reference_2nd"] == {"ratios": [2.0, 3.0, 2.0], "median": 2.0}
    assert r["engine_2nd_gflop_share_of_matmul"] == {"ratios": [0.4, 0.5, 0.5], "median": 0.5}
