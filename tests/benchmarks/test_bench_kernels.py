"""The CPU-side logic of benchmarks/bench_kernels.py: traffic model, table conversion, refusal.

The timings themselves need a GPU (``benchmarks/measure_kernels.sh``); ``--dry-run``
runs every part on CPU at tiny shapes (minutes in the interpreter, not run here).
"""

import importlib.util
import json

import pytest
import torch

from helpers import ROOT

pytest.importorskip("triton")
PATH = ROOT / "benchmarks" / "bench_kernels.py"
spec = importlib.util.spec_from_file_location("bench_kernels", PATH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_traffic_model_counts_the_two_passes_each_way():
    rows = {r["kernel"]: r for r in bench.ersm_traffic(64, 256, 56, torch.bfloat16, True)}
    # forward: x twice (two launches) + out; backward: x and g_out twice + dx
    assert 1.5 <= rows["ersm forward"]["ratio"] < 1.6
    assert 5 / 3 <= rows["ersm backward"]["ratio"] < 1.8
    assert "BLOCK_D 64" in rows["ersm forward"]["launch"]


def test_table_rows_convert_old_and_new_results():
    old = {"device_name": "GPU A", "rows": [
        {"kernel": "ersm fwd+bwd", "size": "B64 C256 7x7", "eager_ms": 2.0, "compile_ms": 1.5,
         "triton_ms": 1.0},
        {"kernel": "population energy", "size": "K8 B64 C256 14x14", "eager_ms": 1.0}]}  # fmt: skip
    (row,) = bench.table_rows(old, kernel_version="v1")
    assert row == {"kernel": "ersm fwd+bwd", "device": "GPU A", "batch": 64, "channels": 256,
                   "map": 7, "layout": "nchw", "dtype": "float32", "eager_ms": 2.0,
                   "compile_ms": 1.5, "triton_ms": 1.0, "triton_version": "v1"}  # fmt: skip
    new = {"device_name": "GPU A", "rows": [
        {"kernel": "ersm fwd", "size": "B2 C8 4x4 bfloat16 channels_last", "batch": 2,
         "channels": 8, "map": 4, "layout": "channels_last", "dtype": "half", "eager_ms": 2.0,
         "triton_ms": 1.0, "triton_version": "v9"}]}  # fmt: skip
    (row,) = bench.table_rows(new)
    assert row["layout"] == "channels_last" and row["triton_version"] == "v9"


def test_write_table_replaces_only_the_measured_devices(tmp_path):
    path = tmp_path / "table.json"
    keep = {"kernel": "ersm fwd", "device": "GPU B", "eager_ms": 1.0, "choice": "kept"}
    path.write_text(json.dumps({"format": "doc", "sources": [{"device": "GPU B", "source": "b"}],
                                "rows": [keep]}))  # fmt: skip
    rows = [{"kernel": "ersm fwd", "device": "GPU A", "eager_ms": 1.0, "compile_ms": 2.0}]
    bench.write_table(path, rows, "run a")
    table = json.loads(path.read_text())
    assert table["format"] == "doc"
    got = [(r["device"], r["choice"]) for r in table["rows"]]
    assert got == [("GPU B", "kept"), ("GPU A", "reference")]
    assert {s["device"]: s["source"] for s in table["sources"]} == {"GPU B": "b", "GPU A": "run a"}


def test_refuses_cuda_without_a_gpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        bench.main(["--device", "cuda"])
    assert "no CUDA device here" in capsys.readouterr().err


def test_table_from_needs_a_table(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--table-from", "x.json"])
    assert "--table-from needs --table" in capsys.readouterr().err
