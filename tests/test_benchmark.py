"""The benchmark command in its reduced form, so that it keeps working (no timing checks)."""
from __future__ import annotations

import json

import pytest

from tests.run_files import run_program


# A process that compiles three full steps: in `pytest -m slow` (CI runs it).
@pytest.mark.slow
def test_benchmark_writes_a_row_per_algorithm(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_program("meta_semi_jax.benchmark", "--model=small_cnn", "--steps=2",
                       "--warmup=0",
                       "--algorithms=meta_semi:jvp,meta_semi:unrolled@bfloat16,ict,ict*2",
                       "--image_size=12", f"--json={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [(r["algorithm"], r["meta_grad"], r["compute_dtype"]) for r in rows] == [
        ("meta_semi", "jvp", "float32"), ("meta_semi", "unrolled", "bfloat16"),
        ("ict", None, "float32"), ("ict", None, "float32")]
    assert [r["num_runs"] for r in rows] == [1, 1, 1, 2]
    for row in rows:
        assert set(row) == {"algorithm", "meta_grad", "model", "compute_dtype", "image_size",
                            "num_runs", "ms_per_step", "images_per_s", "ratio_to_ict",
                            "peak_bytes", "flops"}
        assert row["ms_per_step"] > 0 and row["images_per_s"] > 0 and row["peak_bytes"] > 0
        assert row["flops"] > 0
        assert row["image_size"] == 12
        assert row["ratio_to_ict"] == pytest.approx(row["ms_per_step"] / rows[2]["ms_per_step"])
    assert "| meta_semi | unrolled | small_cnn | bfloat16 | 12 | 1 |" in proc.stdout
    assert "| ict | - | small_cnn | float32 | 12 | 2 |" in proc.stdout
    # Two runs' images per step: 2 x (32 + 96).
    assert rows[3]["images_per_s"] == pytest.approx(256 / (rows[3]["ms_per_step"] / 1000))


# Several processes, each compiling a full step: in `pytest -m slow` (CI runs it).
@pytest.mark.slow
def test_gpu_check_writes_every_part_on_the_cpu(tmp_path):
    """The GPU check in its reduced form on the CPU: every part runs and reports."""
    out = tmp_path / "out"
    proc = run_program("experiments.gpu_check", f"--out={out}", "--models=small_cnn",
                       "--dtypes=float32", "--image_size=8", "--steps=2", "--warmup=0",
                       "--e2e_steps=30", timeout=600)  # 295 s once beside two training runs
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["machine"]["platform"] == "cpu" and report["machine"]["jax"]
    parts = report["parts"]
    assert parts["compile, all rows at once"]["returncode"] == [0] * 6
    rows = parts["small_cnn_float32"]["rows"]
    assert [(r["algorithm"], r["num_runs"]) for r in rows] == [
        ("meta_semi", 1), ("meta_semi", 1), ("ict", 1), ("supervised", 1), ("meta_semi", 2),
        ("meta_semi", 5)]
    assert all(r["ms_per_step"] > 0 for r in rows)
    run = parts["end to end: digits:50, 30 steps"]["end_to_end"]
    assert run["steps"] == 30 and run["steps_per_s_after_first_eval"] > 0
    assert report["full_cifar10"] == []  # no CNN-13 row was timed
    table = (out / "gpu_check.md").read_text()
    assert "| meta_semi | unrolled | small_cnn | float32 | 8 | 1 |" in table
