"""Tabulates finished runs next to the paper's numbers, and plots their training curves.

    python -m experiments.report --root=DIR [--dataset=digits|fashion_mnist]

Writes ``DIR/report.md``: per table, mean ± sample std over seeds of the test error (%)
of the final model, the number of finished seeds, and the paper's value (for the
digits and Fashion-MNIST editions: the paper's value of the analogous cell, and both
rankings; for the cheaper scores, each run's share of the exact score's selections);
and ``DIR/plots/*.png``: test and validation error vs step per method, the beta
sensitivity (Fig. 3), the share of pseudo-labelled examples that Eq. (9) selects, and
the accuracy of the selected vs rejected pseudo labels. Missing runs are listed,
never fatal.
"""
from __future__ import annotations

import collections
import json
import os
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments import tables  # noqa: E402

FLAGS = flags.FLAGS
META_TYPE = ("meta_semi", "meta_semi_ict", "l2rw")
TITLES = {"fig3": "Figure 3", "scores": "Cheaper meta scores (meta_grad)"}


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def read_records(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Runs:
    """The finished runs of each cell under a root."""

    def __init__(self, root: str):
        self.root = root

    def seed_dirs(self, cell: tables.Cell) -> list[str]:
        base = os.path.join(self.root, cell.run_name)
        if not os.path.isdir(base):
            return []
        dirs = [os.path.join(base, d) for d in sorted(os.listdir(base))]
        return [d for d in dirs if os.path.exists(os.path.join(d, "results.json"))]

    def results(self, cell: tables.Cell) -> list[dict[str, Any]]:
        return [read_json(os.path.join(d, "results.json")) for d in self.seed_dirs(cell)]

    def curves(self, cell: tables.Cell) -> list[list[dict[str, Any]]]:
        return [read_records(os.path.join(d, "metrics.jsonl")) for d in self.seed_dirs(cell)]


def mean_std(values: Sequence[float]) -> str:
    """``mean ± sample std`` with two decimals; a single value alone, as it has no spread."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def paper_mean(value: str | None) -> float | None:
    return None if value is None else float(value.split("±")[0])


def ranks(values: dict[str, float | None]) -> dict[str, str]:
    """1 for the lowest error; '-' where there is no value."""
    order = sorted((v, k) for k, v in values.items() if v is not None)
    position = {k: str(i + 1) for i, (_, k) in enumerate(order)}
    return {k: position.get(k, "-") for k in values}


def error_table(cells: Sequence[tables.Cell], runs: Runs, with_ranks: bool) -> list[str]:
    """Markdown: one row per method, per (config, labels) our error and the paper's."""
    groups = list(dict.fromkeys(c.group for c in cells))
    rows = list(dict.fromkeys(c.method.row for c in cells))
    by_key = {(c.method.row, c.group): c for c in cells}
    ours = {key: [r["test_error"] for r in runs.results(c)] for key, c in by_key.items()}
    header = ["method"] + [f"{g}: {side}" for g in groups for side in ("ours (seeds)", "paper")]
    if with_ranks:
        header += ["rank ours", "rank paper"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    if with_ranks:
        g = groups[0]
        our_ranks = ranks({r: statistics.mean(ours[(r, g)]) if ours.get((r, g)) else None
                           for r in rows})
        paper_ranks = ranks({r: paper_mean(by_key[(r, g)].paper) if (r, g) in by_key else None
                             for r in rows})
    for row in rows:
        cols = [row]
        for g in groups:
            cell = by_key.get((row, g))
            errors = ours.get((row, g), [])
            mine = f"{mean_std(errors)} ({len(errors)})" if errors else "-"
            cols.append(f"{mine} | {cell.paper if cell and cell.paper else '-'}")
        if with_ranks:
            cols += [our_ranks[row], paper_ranks[row]]
        lines.append("| " + " | ".join(cols) + " |")
    return lines


def curve_end_table(cells: Sequence[tables.Cell], runs: Runs, last: int = 3) -> list[str]:
    """Markdown: per method, each seed's test error and the mean over seeds of the
    validation accuracy at the last ``last`` evaluations, to show where curves are flat."""
    lines = [f"| method | test error per seed (%) | validation accuracy (%) at the last "
             f"{last} evaluations, mean over seeds |", "|---|---|---|"]
    for cell in cells:
        errors = [r["test_error"] for r in runs.results(cell)]
        steps, accuracies = mean_curve(runs.curves(cell), "val_accuracy")
        if not errors or not steps:
            continue
        tail = " / ".join(f"{a:.2f}" for a in accuracies[-last:])
        at = " / ".join(f"{s:,}" for s in steps[-last:])
        lines.append(f"| {cell.method.row} | {' / '.join(f'{e:.2f}' for e in errors)} "
                     f"| {tail} (steps {at}) |")
    return lines


def selection_agreement(curve: Sequence[dict[str, Any]]) -> float | None:
    """The share (%) of Eq. (9) selections that a cheaper score shares with the exact
    one over all of a run's steps (``log_selection_agreement``); None where not logged."""
    counted = [(r["selection_agreement_accuracy"], r["selection_agreement_count"])
               for r in curve if r.get("selection_agreement_count")]
    total = sum(count for _, count in counted)
    return sum(a * count for a, count in counted) / total if total else None


def agreement_table(cells: Sequence[tables.Cell], runs: Runs) -> list[str]:
    """Markdown: per method, its selections shared with the exact score, per seed."""
    lines = ["| method | Eq. (9) selections shared with the exact score, per seed (%) |",
             "|---|---|"]
    for cell in cells:
        shares = [selection_agreement(curve) for curve in runs.curves(cell)]
        shown = [f"{v:.2f}" for v in shares if v is not None]
        if shown:
            lines.append(f"| {cell.method.row} | {' / '.join(shown)} |")
    return lines


def error_at_time(curve: Sequence[dict[str, Any]], seconds: float) -> float | None:
    """Test error (%) of the last evaluation at or before ``seconds`` of training."""
    done = [r for r in curve if r.get("wall_seconds") is not None
            and r["wall_seconds"] <= seconds and r.get("test_accuracy") is not None]
    return 100.0 - done[-1]["test_accuracy"] if done else None


def time_budget_table(budget: tables.TimeBudget, cells: Sequence[tables.Cell],
                      runs: Runs) -> list[str]:
    """Table 4: errors at the paper's times, as fractions of our reference run's time."""
    ref = next(c for c in cells if c.config == budget.config and c.method == budget.reference)
    others = [c for c in cells if c.config == budget.config and c is not ref]
    ref_times = [r["wall_seconds"] for r in runs.results(ref)]
    header = ["method"] + [f"{h} h: {side}" for h in budget.hours for side in ("ours", "paper")]
    lines = [f"{budget.config}, 10000 labels; our times are the paper's fractions of the "
             f"mean full {budget.reference.row} run "
             f"({statistics.mean(ref_times) / 3600:.2f} h)" if ref_times else
             f"{budget.config}: no finished {budget.reference.row} run yet",
             "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cell in [ref] + others:
        cols = [cell.method.row]
        paper = budget.paper.get(cell.method.row, ("-",) * len(budget.hours))
        curves = runs.curves(cell)
        for hours, value in zip(budget.hours, paper, strict=True):
            errors = []
            if ref_times:
                seconds = statistics.mean(ref_times) * hours / budget.hours[-1]
                errors = [e for e in (error_at_time(c, seconds) for c in curves)
                          if e is not None]
            cols.append(f"{statistics.mean(errors):.2f} | {value}" if errors else f"- | {value}")
        lines.append("| " + " | ".join(cols) + " |")
    return lines


def mean_curve(curves: Iterable[Sequence[dict[str, Any]]], key: str,
               transform=lambda v: v) -> tuple[list[int], list[float]]:
    """Steps and the mean over seeds of ``key`` where every seed has a value."""
    per_step = collections.defaultdict(list)
    for curve in curves:
        for record in curve:
            if record.get(key) is not None:
                per_step[record["step"]].append(transform(record[key]))
    count = max((len(v) for v in per_step.values()), default=0)
    steps = sorted(s for s, v in per_step.items() if len(v) == count)
    return steps, [statistics.mean(per_step[s]) for s in steps]


def save_plot(path: str, title: str, ylabel: str, xlabel: str = "step") -> None:
    plt.title(title)
    plt.xlabel(xlabel)
    plt.ylabel(ylabel)
    plt.legend(fontsize="small")
    plt.grid(alpha=0.3)
    plt.tight_layout()
    plt.savefig(path, dpi=120)
    plt.close()


def plot_group(cells: Sequence[tables.Cell], runs: Runs, plots: str, name: str) -> list[str]:
    """Learning curves, selected share and pseudo-label accuracies for one group."""
    written = []
    with_curves = [(c, runs.curves(c)) for c in cells]
    with_curves = [(c, curves) for c, curves in with_curves if curves]
    if not with_curves:
        return written
    for split in ("test", "val"):
        for c, curves in with_curves:
            plt.plot(*mean_curve(curves, f"{split}_accuracy", lambda a: 100.0 - a),
                     label=c.method.row)
        path = os.path.join(plots, f"{split}_error_{name}.png")
        save_plot(path, f"{split} error, {name}", f"{split} error (%)")
        written.append(path)
    meta = [(c, curves) for c, curves in with_curves if c.method.algorithm in META_TYPE]
    if any(mean_curve(curves, "selected")[0] for _, curves in meta):
        for c, curves in meta:
            plt.plot(*mean_curve(curves, "selected"), label=c.method.row)
        path = os.path.join(plots, f"selected_{name}.png")
        save_plot(path, f"share of U~ selected (Eq. 9), {name}", "selected share")
        written.append(path)
    main = next((curves for c, curves in meta if c.method == tables.META_SEMI), None)
    if main and mean_curve(main, "selected_pseudo_label_accuracy")[0]:
        for key, label in (("pseudo_label_accuracy", "all pseudo labels"),
                           ("selected_pseudo_label_accuracy", "selected"),
                           ("rejected_pseudo_label_accuracy", "rejected")):
            plt.plot(*mean_curve(main, key), label=label)
        path = os.path.join(plots, f"pseudo_label_accuracy_{name}.png")
        save_plot(path, f"Meta-Semi's pseudo-label accuracy, {name}", "accuracy (%)")
        written.append(path)
    return written


def plot_beta(cells: Sequence[tables.Cell], runs: Runs, plots: str) -> str | None:
    """Fig. 3: final test error vs beta (Meta-Semi) and vs alpha per weight (ICT)."""
    lines = collections.defaultdict(list)
    for cell in cells:
        errors = [r["test_error"] for r in runs.results(cell)]
        if not errors:
            continue
        values = dict(cell.method.overrides)
        if cell.method.algorithm == "meta_semi":
            lines["Meta-Semi"].append((values["beta"], statistics.mean(errors)))
        else:
            lines[f"ICT, w={values['ict.weight']:g}"].append(
                (values["ict.alpha"], statistics.mean(errors)))
    if not lines:
        return None
    for label, points in lines.items():
        plt.plot(*zip(*sorted(points), strict=True), marker="o", label=label)
    plt.xscale("log")
    path = os.path.join(plots, "fig3_beta_sensitivity.png")
    save_plot(path, f"test error vs MixUp's beta (ICT: alpha), {cells[0].group}",
              "test error (%)", xlabel="beta / alpha")
    return path


def report(root: str, edition: str) -> str:
    """Writes report.md and the plots; returns the report's text."""
    runs = Runs(root)
    plots = os.path.join(root, "plots")
    os.makedirs(plots, exist_ok=True)
    analogous = edition != "paper"  # a small edition: the paper's analogous cells
    out = [f"# Meta-Semi experiments ({edition} edition)", "",
           "Test error (%) of the final model, mean ± sample std over split seeds "
           "(finished seeds in brackets)" + (
               "; 'paper' is the paper's value of the analogous cell (Table 1: CIFAR-10, "
               "1000 labels; Table 5: CIFAR-100, 4000 labels), shown for the ordering."
               if analogous else "; 'paper' is the paper's value."), ""]
    for table in tables.TABLES[edition]:
        cells = tables.cells(edition, table)
        if table == "4":
            out += ["## Table 4", ""]
            for budget in tables.TABLE4:
                out += time_budget_table(budget, cells, runs) + [""]
            continue
        title = TITLES.get(table, f"Table {table}")
        ranked = analogous and table in ("1", "5")
        out += [f"## {title}", ""] + error_table(cells, runs, ranked) + [""]
        if table != "fig3":
            out += curve_end_table(cells, runs) + [""]
        if table == "scores":
            out += agreement_table(cells, runs) + [""]
        written = [plot_beta(cells, runs, plots)] if table == "fig3" else []
        prefix = f"table{table}" if table.isdigit() else table
        for group in dict.fromkeys(c.group for c in cells):
            written += plot_group([c for c in cells if c.group == group], runs, plots,
                                  f"{prefix}_{group}")
        out += [f"![{os.path.basename(p)}](plots/{os.path.basename(p)})"
                for p in written if p] + [""]
        missing = [c.run_name for c in cells if not runs.seed_dirs(c)]
        if missing:
            out += [f"No finished run yet: {', '.join(dict.fromkeys(missing))}.", ""]
    flag = f" --dataset={edition}" if analogous else ""
    out += ["## Commands", "", "```"] + [
        f"python -m experiments.run --table={t} --seeds=N --root=ROOT{flag}"
        for t in tables.TABLES[edition]] + [
        f"python -m experiments.report --root=ROOT{flag}", "```", ""]
    text = "\n".join(out)
    with open(os.path.join(root, "report.md"), "w") as f:
        f.write(text)
    return text


def main(argv: Sequence[str]) -> None:
    del argv
    print(report(os.path.abspath(FLAGS.root), FLAGS.dataset))


def define_flags() -> None:
    flags.DEFINE_string("root", None, "Directory of all runs (as given to experiments.run).")
    flags.DEFINE_enum("dataset", "paper", list(tables.EDITIONS), "Edition.")
    flags.mark_flags_as_required(["root"])


if __name__ == "__main__":
    define_flags()
    app.run(main)
