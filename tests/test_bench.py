"""`make bench`'s machinery (its speeds are never asserted: benchmarks are a separate command)."""
import json

import pytest

from experiments import bench


@pytest.mark.slow(seconds=55)
def test_workers_time_both_models_on_the_same_batches_and_report_a_ratio():
    rows = bench.measure("mlm", precisions=[False], steps=1, rounds=1)
    assert [row["model"] for row in rows] == ["ours MLM", "HF BertForMaskedLM"]
    assert all(row["step_s"] > 0 and row["tokens_per_s"] > 0 and row["achieved_gflops"] > 0 for row in rows)
    # the ratio is HF's median step time over ours (both rounded for the table)
    assert abs(rows[0]["speedup_vs_hf"] - rows[1]["step_s"] / rows[0]["step_s"]) < 0.02
    json.dumps(rows)  # what results/bench.json holds
