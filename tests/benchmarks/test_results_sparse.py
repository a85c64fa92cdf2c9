"""The table logic of benchmarks/results_sparse.py: one run's table, and mean ± std over seeds.

Training and timing are the benchmark's (minutes); here only what turns results into the
numbers the README and docs/design.md §11 print.
"""

import importlib.util
import json

import pytest

from helpers import ROOT

PATH = ROOT / "benchmarks" / "results_sparse.py"
spec = importlib.util.spec_from_file_location("results_sparse", PATH)
results_sparse = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results_sparse)


def _row(accuracy: float, keep: float) -> dict:
    return {"masked_dense_accuracy": accuracy, "sparse_accuracy": accuracy,
            "keep": {"layer1": keep, "layer2": 0.5, "layer3": 0.7, "layer4": 0.9},
            "blocks_flops_ratio": keep + 0.5, "blocks_time_ratio": 1.0,
            "model_flops_ratio": 0.8, "model_time_ratio": 0.9}


def _result(seed_runs: list[tuple[str, float, float, float]]) -> dict:
    return {"runs": [{"label": label, "dense_accuracy": dense, "learned": _row(acc, keep),
                      "given": {"0.3": _row(0.2, 0.3)}}
                     for label, dense, acc, keep in seed_runs]}


def _cells(table: str, label: str) -> list[str]:
    (line,) = [ln for ln in table.splitlines() if ln.startswith(f"| {label} |")]
    return [c.strip() for c in line.strip("|").split("|")]


def test_seeds_table_gives_mean_std_and_the_gap_taken_per_seed():
    results = [_result([("a", 0.96, 0.90, 0.2), ("b", 0.96, 0.50, 0.4)]),
               _result([("a", 0.94, 0.92, 0.3)]),
               _result([("a", 0.95, 0.94, 0.4)])]
    cells = _cells(results_sparse.seeds_markdown(results), "a")
    # runs, baseline, sparse accuracy, baseline - sparse in points (6, 2, 1), keep at the mask
    assert cells[1:6] == ["3", "0.950 ± 0.010", "0.920 ± 0.020", "3.0 ± 2.6", "0.30 ± 0.10"]
    assert cells[6] == "0.90 ± 0.00"  # keep at the last grid
    assert _cells(results_sparse.seeds_markdown(results), "b")[1:5] == ["1", "0.960", "0.500",
                                                                       "46.0"]


def test_table_prints_one_run_or_the_seeds_summary(tmp_path, capsys):
    paths = []
    for i, acc in enumerate((0.9, 0.8)):
        paths.append(tmp_path / f"seed{i}.json")
        paths[-1].write_text(json.dumps(_result([("a", 0.95, acc, 0.25)])))
    assert results_sparse.main(["--table", str(paths[0])]) == 0
    one = capsys.readouterr().out
    assert "| a | learned | 0.950 | 0.900 | 0.900 | 0.25 / 0.50 / 0.70 / 0.90 |" in one
    assert "| a | given blob 0.3 |" in one
    assert results_sparse.main(["--table", *map(str, paths)]) == 0
    assert _cells(capsys.readouterr().out, "a")[1:4] == ["2", "0.950 ± 0.000", "0.850 ± 0.071"]


def test_bad_block_gradient_choice_is_refused(capsys):
    with pytest.raises(SystemExit):
        results_sparse.main(["--block-gradient", "yes"])
    assert "invalid choice: 'yes'" in capsys.readouterr().err
