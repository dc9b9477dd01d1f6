"""The table definitions, the runner (on the digits edition, tiny runs) and the report."""
from __future__ import annotations

import json
import pathlib

import pytest

from experiments import report, run, tables
from tests.run_files import QUICK_RUN, QUICK_RUN_DEVICES, run_program

# Shares the quick run's compiled programs with test_main and test_resume.
pytestmark = pytest.mark.xdist_group("quick_run")


def test_every_paper_value_parses_and_table1_has_the_papers_cells():
    cells = tables.cells("paper")
    for cell in cells:
        if cell.paper is not None:
            # "mean ± std", or the mean alone (MT + fast-SWA on CIFAR-10)
            mean, *std = (float(v) for v in cell.paper.split("±"))
            assert 0 < mean < 100 and len(std) <= 1 and all(0 <= s < 5 for s in std)
    numeric = [c for c in tables.cells("paper", "1") if c.paper is not None]
    assert len(numeric) == 12 * 5 - 6 + 3 + 4 + 4  # CNN-13 rows (six '-') + WRN rows


def test_a_run_is_shared_by_the_tables_that_use_it():
    cells = tables.cells("paper")
    meta = {c.run_name for c in cells if c.method == tables.META_SEMI and c.group ==
            "cifar100_10000"}
    assert meta == {"cifar100_10000/meta_semi"}
    # Fig. 3's beta = 1.0 is the config's own beta: the same run again.
    assert {c.table for c in cells if c.run_name == "cifar100_10000/meta_semi"} == {
        "1", "4", "5", "fig3"}
    # Fig. 3's ICT at its default alpha and weight is the Table 1 ICT run.
    assert "cifar100_10000/ict" in {c.run_name for c in tables.cells("paper", "fig3")}


def test_the_digits_edition_has_the_listed_rows():
    rows = [c.method.row for c in tables.cells("digits", "1")]
    assert rows == ["Supervised", "Supervised + MixUp", "Π-model", "Temp-ensemble",
                    "Mean Teacher", "Mean Teacher + fast-SWA", "VAT", "SNTG",
                    "Learning to Reweight", "ICT", "MixMatch", "Meta-Semi", "Meta-Semi + ICT"]
    assert len(tables.cells("digits", "5")) == 9
    with pytest.raises(ValueError, match="not in the digits edition"):
        tables.cells("digits", "2")


def test_the_fashion_mnist_edition_runs_the_digits_rows_on_the_configs_own_length(tmp_path):
    for table in ("1", "5"):
        digits, fashion = tables.cells("digits", table), tables.cells("fashion_mnist", table)
        assert [c.method for c in fashion] == [c.method for c in digits]
        assert {c.group for c in fashion} == {"fashion_mnist_1000"}
    # Table 5's Meta-Semi rows are Table 1's runs: 13 + 7 distinct runs per seed, and
    # the cheaper scores' table adds two (its exact row is Table 1's Meta-Semi).
    cells = tables.cells("fashion_mnist")
    assert len({c.run_name for c in cells}) == 22
    assert {c.run_name for c in tables.cells("fashion_mnist", "scores")} == {
        "fashion_mnist_1000/meta_semi",
        "fashion_mnist_1000/meta_semi__log_selection_agreement=True,meta_grad=last_layer",
        "fashion_mnist_1000/meta_semi__log_selection_agreement=True,"
        "meta_grad=finite_difference"}
    runs = run.runs_of(cells, "/r", 3, list(tables.EDITION_OVERRIDES["fashion_mnist"]))
    assert len(runs) == 66 and not any("num_train_steps" in " ".join(r.command) for r in runs)
    config = tables.load_config("fashion_mnist", 1000)
    assert (config.num_train_steps, config.ema_decay) == (2400, 0.99)
    with pytest.raises(ValueError, match="not in the fashion_mnist edition"):
        tables.cells("fashion_mnist", "fig3")
    text = report.report(str(tmp_path), "fashion_mnist")  # nothing run yet: all missing
    assert "## Cheaper meta scores (meta_grad)" in text and "--dataset=fashion_mnist" in text
    assert text.count("No finished run yet") == 3


def test_shards_are_disjoint_and_cover_the_runs_and_cells_filter():
    runs = run.runs_of(tables.cells("paper", "5"), "/r", 3, [])
    assert len(runs) == 9 * 2 * 3
    # Seed by seed, so that a method's later seeds load its compiled programs.
    assert [r.workdir[-6:] for r in runs] == [f"seed_{s}" for s in range(3) for _ in range(18)]
    shards = [run.select(runs, "/r", [], f"{i}/4") for i in range(4)]
    names = [r.workdir for shard in shards for r in shard]
    assert sorted(names) == sorted(r.workdir for r in runs) and len(set(names)) == len(names)
    kept = run.select(runs, "/r", ["cifar100_4000/meta_semi__mixup"], "0/1")
    assert len(kept) == 3 * 3  # three MixUp ablations, three seeds


def test_the_runs_share_a_compilation_cache(monkeypatch):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    assert run.compilation_cache_dir("/r", None) == "/r/.jax_cache"
    assert run.compilation_cache_dir("/r", "") == ""
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/cache")
    assert run.compilation_cache_dir("/r", None) == "/cache"
    assert run.compilation_cache_dir("/r", "/mine") == "/mine"


def test_selection_agreement_weights_each_evaluation_by_its_count():
    curve = [{"step": 10, "selection_agreement_accuracy": 80.0,
              "selection_agreement_count": 100},
             {"step": 20, "test_accuracy": 90.0},
             {"step": 30, "selection_agreement_accuracy": 90.0,
              "selection_agreement_count": 300}]
    assert report.selection_agreement(curve) == pytest.approx(87.5)
    assert report.selection_agreement(curve[1:2]) is None


def test_mean_std_ranks_and_time_lookup():
    assert report.mean_std([1.0, 2.0, 3.0]) == "2.00 ± 1.00"
    assert report.mean_std([17.484]) == "17.48"
    assert report.ranks({"a": 3.0, "b": None, "c": 1.0}) == {"a": "2", "b": "-", "c": "1"}
    curve = [{"step": 1, "wall_seconds": 10.0, "test_accuracy": 60.0},
             {"step": 2, "wall_seconds": 20.0, "test_accuracy": 70.0}]
    assert report.error_at_time(curve, 15.0) == 40.0
    assert report.error_at_time(curve, 5.0) is None


def write_run(workdir: pathlib.Path, wall: float, curve: list[tuple[float, float]]):
    workdir.mkdir(parents=True)
    (workdir / "results.json").write_text(json.dumps(
        {"test_error": 100.0 - curve[-1][1], "wall_seconds": wall}))
    (workdir / "metrics.jsonl").write_text("".join(
        json.dumps({"step": i, "wall_seconds": t, "test_accuracy": a}) + "\n"
        for i, (t, a) in enumerate(curve)))


def test_curve_end_table_gives_each_seed_and_the_mean_validation_tail(tmp_path):
    cells = [c for c in tables.cells("digits", "1") if c.method in (tables.ICT,
                                                                     tables.META_SEMI)]
    ict = next(c for c in cells if c.method == tables.ICT)
    for seed, (error, accuracies) in enumerate([(20.0, (70.0, 75.0, 78.0, 79.0)),
                                                (22.5, (72.0, 77.0, 80.0, 80.0))]):
        workdir = pathlib.Path(ict.run_dir(str(tmp_path), seed))
        workdir.mkdir(parents=True)
        (workdir / "results.json").write_text(json.dumps({"test_error": error}))
        (workdir / "metrics.jsonl").write_text("".join(
            json.dumps({"step": 1000 * (i + 1), "val_accuracy": a}) + "\n"
            for i, a in enumerate(accuracies)))
    lines = report.curve_end_table(cells, report.Runs(str(tmp_path)))
    assert lines[2:] == [
        "| ICT | 20.00 / 22.50 | 76.00 / 79.00 / 79.50 (steps 2,000 / 3,000 / 4,000) |"]


def test_table4_reads_errors_at_the_papers_time_fractions(tmp_path):
    budget = tables.TABLE4[0]  # ICT's 12.6 h defines our full time
    cells = [c for c in tables.cells("paper", "4") if c.config == budget.config]
    ict, meta = (next(c for c in cells if c.method == m) for m in (tables.ICT, tables.META_SEMI))
    write_run(pathlib.Path(ict.run_dir(str(tmp_path), 0)), 126.0,
              [(50.0, 60.0), (75.0, 65.0), (100.0, 66.0), (126.0, 67.0)])
    write_run(pathlib.Path(meta.run_dir(str(tmp_path), 0)), 180.0,
              [(49.0, 61.0), (60.0, 68.0), (130.0, 70.0)])
    lines = report.time_budget_table(budget, cells, report.Runs(str(tmp_path)))
    # 5.0 / 12.6 of 126 s = 50 s: ICT 40.00, Meta-Semi 39.00; at 126 s: 33.00 and 32.00.
    assert lines[4] == "| ICT | 40.00 | 33.43 | 35.00 | 32.84 | 34.00 | 32.61 | 33.00 | 32.24 |"
    assert lines[5].startswith("| Meta-Semi | 39.00 | 32.73 | 32.00 | 31.81 | 32.00 |")


def test_runner_skips_finished_runs_and_the_report_has_numbers_and_plots(tmp_path,
                                                                        finished_quick_run):
    # Two seeds of Meta-Semi with the quick run's fields and devices, at the same time:
    # their programs are the quick run's, loaded from the session's cache (hence the
    # finished quick run first: two runs that start together would both compile).
    quick_run = [f"--override={flag.removeprefix('--config.')}" for flag in QUICK_RUN
                 if flag.startswith("--config.")]
    args = ("--table=1", "--seeds=2", f"--root={tmp_path}", "--dataset=digits", "--jobs=2",
            "--cells=/meta_semi/", *quick_run)
    first = run_program("experiments.run", *args, devices=QUICK_RUN_DEVICES, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr[-3000:]
    assert "2 runs, 0 finished, 2 to run" in first.stdout
    again = run_program("experiments.run", *args, devices=QUICK_RUN_DEVICES, timeout=600)
    assert "2 runs, 2 finished, 0 to run" in again.stdout
    for seed in (0, 1):
        config = json.loads(
            (tmp_path / f"digits_50/meta_semi/seed_{seed}/config.json").read_text())
        assert config["num_train_steps"] == 90 and config["split_seed"] == seed
    text = report.report(str(tmp_path), "digits")
    assert (tmp_path / "report.md").read_text() == text
    errors = [json.loads((tmp_path / f"digits_50/meta_semi/seed_{seed}/results.json")
                         .read_text())["test_error"] for seed in (0, 1)]
    meta_row = next(line for line in text.splitlines() if line.startswith("| Meta-Semi |"))
    assert f"{report.mean_std(errors)} (2) | 10.27 ± 0.66 |" in meta_row
    assert "No finished run yet: digits_50/supervised" in text
    for name in ("test_error_table1_digits_50.png", "val_error_table1_digits_50.png",
                 "selected_table1_digits_50.png", "pseudo_label_accuracy_table1_digits_50.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000
