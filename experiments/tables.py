"""The paper's tables as cells: which runs make each number, and the paper's value.

A cell is one number of a table: a method (an algorithm and config overrides) on a
config file and label count. Its runs live in ``ROOT/<config>_<labels>/<method key>/
seed_<i>``, so a run that several tables share (Meta-Semi is in Tables 1, 4 and 5) is
trained once. Values are test errors in percent, "mean ± std" over the paper's 5 runs.

The digits edition has the same tables 1, 5 and Fig. 3 on scikit-learn's digits (50
labels), the Fashion-MNIST edition Tables 1 and 5 with 1000 labels (and the cheaper
meta scores next to the exact one); in Tables 1 and 5 each row shows, for comparison
of the ordering, the paper's value of an analogous cell: CIFAR-10 with 1000 labels for
Table 1 and CIFAR-100 with 4000 for Table 5.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import os
from typing import Any

import ml_collections


@dataclasses.dataclass(frozen=True)
class Method:
    """A row of a table: an algorithm and its config overrides."""
    row: str
    algorithm: str
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def key(self) -> str:
        """``algorithm`` or ``algorithm__field=value,...`` (overrides sorted)."""
        if not self.overrides:
            return self.algorithm
        return self.algorithm + "__" + ",".join(f"{k}={v}" for k, v in sorted(self.overrides))

    def config_flags(self) -> list[str]:
        return [f"--config.algorithm={self.algorithm}"] + [
            f"--config.{k}={v}" for k, v in sorted(self.overrides)]


@dataclasses.dataclass(frozen=True)
class Cell:
    """One number of a table."""
    table: str
    method: Method
    config: str
    labels: int
    paper: str | None = None

    @property
    def group(self) -> str:
        return f"{self.config}_{self.labels}"

    @property
    def run_method(self) -> Method:
        """The method without the overrides that repeat the config's own value, so that
        e.g. Fig. 3's beta=0.5 on digits is the same run as plain Meta-Semi there."""
        config = load_config(self.config, self.labels)
        kept = tuple((k, v) for k, v in self.method.overrides if config_value(config, k) != v)
        return dataclasses.replace(self.method, overrides=kept)

    @property
    def run_name(self) -> str:
        return f"{self.group}/{self.run_method.key}"

    def run_dir(self, root: str, seed: int) -> str:
        return os.path.join(root, self.run_name, f"seed_{seed}")


@functools.cache
def load_config(stem: str, labels: int) -> ml_collections.ConfigDict:
    """``configs/<stem>.py``'s config for ``labels`` labels."""
    return importlib.import_module(f"configs.{stem}").get_config(str(labels))


def config_value(config: ml_collections.ConfigDict, dotted: str) -> Any:
    for part in dotted.split("."):
        config = config[part]
    return config


SUPERVISED = Method("Supervised", "supervised")
SUPERVISED_MIXUP = Method("Supervised + MixUp", "supervised_mixup")
PI_MODEL = Method("Π-model", "pi_model")
TEMPORAL_ENSEMBLING = Method("Temp-ensemble", "temporal_ensembling")
MEAN_TEACHER = Method("Mean Teacher", "mean_teacher")
MEAN_TEACHER_FAST_SWA = Method("Mean Teacher + fast-SWA", "mean_teacher_fast_swa")
VAT = Method("VAT", "vat")
SNTG = Method("SNTG", "sntg")
L2RW = Method("Learning to Reweight", "l2rw")
ICT = Method("ICT", "ict")
MIXMATCH = Method("MixMatch", "mixmatch")
META_SEMI = Method("Meta-Semi", "meta_semi")
META_SEMI_ICT = Method("Meta-Semi + ICT", "meta_semi_ict")
ABLATIONS = (
    Method("Without parameter EMA", "meta_semi", (("ema_decay", 0.0),)),
    Method("One-hot pseudo labels", "meta_semi", (("pseudo_label", "one_hot"),)),
    Method("MixUp on unlabeled data only", "meta_semi", (("mixup", "unlabeled"),)),
    Method("MixUp on labeled data only", "meta_semi", (("mixup", "labeled"),)),
    Method("Without MixUp", "meta_semi", (("mixup", "none"),)),
    Method("Reweighting with the constant 1", "meta_semi", (("weights", "ones"),)),
    Method("Reweighting with -1 and 1", "meta_semi", (("weights", "sign"),)),
)
BETAS = (0.1, 0.2, 0.5, 1.0)
# The cheaper scores of Eq. (10) (meta.py), each logging how many of the exact score's
# Eq. (9) selections it shares (which does not change its training).
CHEAPER_SCORES = tuple(
    Method(f"Meta-Semi, meta_grad={grad}", "meta_semi",
           (("meta_grad", grad), ("log_selection_agreement", True)))
    for grad in ("last_layer", "finite_difference"))


def wrn(method: Method) -> Method:
    return dataclasses.replace(method, row=method.row + " †")


# Table 1: row -> values for CIFAR-10 1000 / 2000 / 4000 and CIFAR-100 4000 / 10000.
TABLE1_CNN13 = {
    SUPERVISED: ("39.95 ± 0.75", "27.67 ± 0.12", "20.42 ± 0.21", "58.31 ± 0.89",
                 "44.56 ± 0.30"),
    SUPERVISED_MIXUP: ("31.83 ± 0.65", "24.22 ± 0.15", "17.37 ± 0.35", "54.87 ± 0.07",
                       "40.97 ± 0.47"),
    PI_MODEL: ("28.74 ± 0.48", "17.57 ± 0.44", "12.36 ± 0.17", "55.39 ± 0.55", "38.06 ± 0.37"),
    TEMPORAL_ENSEMBLING: ("25.15 ± 1.46", "15.78 ± 0.44", "11.90 ± 0.25", None, "38.65 ± 0.51"),
    MEAN_TEACHER: ("18.27 ± 0.53", "13.45 ± 0.30", "10.73 ± 0.14", "45.36 ± 0.49",
                   "35.96 ± 0.77"),
    # The paper gives no standard deviation for CIFAR-10 in this row.
    MEAN_TEACHER_FAST_SWA: ("15.58", "11.02", "9.05", None, "33.62 ± 0.54"),
    VAT: ("18.12 ± 0.82", "13.93 ± 0.33", "11.10 ± 0.24", None, None),
    SNTG: ("18.41 ± 0.52", "13.64 ± 0.32", "10.93 ± 0.14", None, "37.97 ± 0.29"),
    L2RW: ("11.74 ± 0.12", None, "9.44 ± 0.17", "46.62 ± 0.29", "37.31 ± 0.47"),
    ICT: ("12.44 ± 0.57", "8.69 ± 0.15", "7.18 ± 0.24", "40.07 ± 0.38", "32.24 ± 0.16"),
    META_SEMI: ("10.27 ± 0.66", "8.42 ± 0.30", "7.05 ± 0.27", "37.61 ± 0.56", "30.51 ± 0.32"),
    META_SEMI_ICT: ("9.29 ± 0.62", "7.05 ± 0.12", "6.42 ± 0.18", "37.12 ± 0.59",
                    "29.68 ± 0.05"),
}
TABLE1_WRN = {
    wrn(MEAN_TEACHER): ("17.32 ± 4.00", "12.17 ± 0.22", "10.36 ± 0.25", None, None),
    wrn(MIXMATCH): ("7.75 ± 0.32", "7.03 ± 0.15", "6.24 ± 0.06", None, "30.84 ± 0.29"),
    wrn(META_SEMI): ("7.34 ± 0.22", "6.58 ± 0.07", "6.10 ± 0.10", None, "29.69 ± 0.18"),
}
TABLE1_COLUMNS = (("cifar10", 1000), ("cifar10", 2000), ("cifar10", 4000),
                  ("cifar100", 4000), ("cifar100", 10000))
TABLE3 = {  # SVHN 500 / 1000
    PI_MODEL: ("6.65 ± 0.53", "4.82 ± 0.17"),
    TEMPORAL_ENSEMBLING: ("5.12 ± 0.13", "4.42 ± 0.16"),
    MEAN_TEACHER: ("4.18 ± 0.27", "3.95 ± 0.19"),
    ICT: ("4.23 ± 0.15", "3.89 ± 0.04"), SNTG: ("3.99 ± 0.24", "3.86 ± 0.27"),
    META_SEMI: ("4.12 ± 0.21", "3.92 ± 0.11"),
    META_SEMI_ICT: ("3.98 ± 0.09", "3.77 ± 0.05"),
}
TABLE5 = {  # CIFAR-100 4000 / 10000
    ABLATIONS[0]: ("47.68 ± 0.27", "37.15 ± 1.02"),
    ABLATIONS[1]: ("41.52 ± 0.51", "32.78 ± 0.41"),
    ABLATIONS[2]: ("37.69 ± 0.50", "30.56 ± 0.39"),
    ABLATIONS[3]: ("45.90 ± 0.15", "36.11 ± 0.21"),
    ABLATIONS[4]: ("46.71 ± 0.05", "35.98 ± 0.69"),
    ABLATIONS[5]: ("40.26 ± 0.64", "32.17 ± 0.14"),
    ABLATIONS[6]: ("45.41 ± 0.38", "36.39 ± 0.44"),
    META_SEMI: ("37.61 ± 0.56", "30.51 ± 0.32"),
    META_SEMI_ICT: ("37.12 ± 0.59", "29.68 ± 0.05"),
}


@dataclasses.dataclass(frozen=True)
class TimeBudget:
    """Table 4: test error after the paper's training times, for a reference method
    (whose full run defines 100 %) and Meta-Semi on the same config."""
    config: str
    hours: tuple[float, ...]
    reference: Method
    paper: dict[str, tuple[str, ...]]


TABLE4 = (
    TimeBudget("cifar100", (5.0, 7.5, 10.0, 12.6), ICT,
               {"ICT": ("33.43", "32.84", "32.61", "32.24"),
                "Meta-Semi": ("32.73", "31.81", "31.06", "30.84")}),
    TimeBudget("cifar100_wrn", (13.7, 18.3, 22.8, 29.2), wrn(MIXMATCH),
               {"MixMatch †": ("32.94", "31.91", "31.26", "30.84"),
                "Meta-Semi †": ("31.74", "30.85", "30.50", "30.13")}),
)


def fig3_methods(ict_weights: tuple[float, ...]) -> list[Method]:
    """Meta-Semi over beta and ICT over its alpha and consistency weight (Fig. 3)."""
    methods = [Method(f"Meta-Semi, beta={b}", "meta_semi", (("beta", b),)) for b in BETAS]
    methods += [Method(f"ICT, alpha={a}, w={w}", "ict", (("ict.alpha", a), ("ict.weight", w)))
                for w in ict_weights for a in BETAS]
    return methods


def paper_cells() -> list[Cell]:
    cells = []
    for rows, suffix in ((TABLE1_CNN13, ""), (TABLE1_WRN, "_wrn")):
        for method, values in rows.items():
            for (config, labels), value in zip(TABLE1_COLUMNS, values, strict=True):
                if value is not None or not suffix:
                    cells.append(Cell("1", method, config + suffix, labels, value))
    cells += [Cell("2", wrn(MIXMATCH), "stl10", 1000, "10.18 ± 1.46"),
              Cell("2", wrn(META_SEMI), "stl10", 1000, "8.03 ± 0.24")]
    cells += [Cell("3", method, "svhn", labels, value) for method, values in TABLE3.items()
              for labels, value in zip((500, 1000), values, strict=True)]
    for budget in TABLE4:
        meta = wrn(META_SEMI) if budget.config.endswith("_wrn") else META_SEMI
        cells += [Cell("4", budget.reference, budget.config, 10000),
                  Cell("4", meta, budget.config, 10000)]
    cells += [Cell("5", method, "cifar100", labels, value) for method, values in TABLE5.items()
              for labels, value in zip((4000, 10000), values, strict=True)]
    cells += [Cell("fig3", method, "cifar100", 10000) for method in fig3_methods((10.0, 100.0))]
    return cells


def digits_cells() -> list[Cell]:
    table1 = (SUPERVISED, SUPERVISED_MIXUP, PI_MODEL, TEMPORAL_ENSEMBLING, MEAN_TEACHER,
              MEAN_TEACHER_FAST_SWA, VAT, SNTG, L2RW, ICT, MIXMATCH, META_SEMI, META_SEMI_ICT)
    reference1 = {**{m: v[0] for m, v in TABLE1_CNN13.items()}, MIXMATCH: "7.75 ± 0.32"}
    cells = [Cell("1", m, "digits", 50, reference1.get(m)) for m in table1]
    cells += [Cell("5", m, "digits", 50, values[0]) for m, values in TABLE5.items()]
    cells += [Cell("fig3", m, "digits", 50) for m in fig3_methods((10.0,))]
    return cells


def fashion_mnist_cells() -> list[Cell]:
    """Tables 1 and 5 on Fashion-MNIST with 1000 labels and ``configs/fashion_mnist.py``
    (the config's own run length), the reference values as in the digits edition; and
    "scores": exact Meta-Semi next to its cheaper scores."""
    cells = [dataclasses.replace(c, config="fashion_mnist", labels=1000)
             for c in digits_cells() if c.table in ("1", "5")]
    return cells + [Cell("scores", m, "fashion_mnist", 1000)
                    for m in (META_SEMI, *CHEAPER_SCORES)]


EDITIONS = {"paper": paper_cells, "digits": digits_cells, "fashion_mnist": fashion_mnist_cells}
# Overrides every run of an edition gets (kept out of the method keys).
EDITION_OVERRIDES: dict[str, tuple[tuple[str, Any], ...]] = {
    "paper": (), "digits": (("num_train_steps", 2000),), "fashion_mnist": ()}
TABLES = {"paper": ("1", "2", "3", "4", "5", "fig3"), "digits": ("1", "5", "fig3"),
          "fashion_mnist": ("1", "5", "scores")}


def cells(edition: str, table: str | None = None) -> list[Cell]:
    """The cells of ``table`` (all tables when None) in ``edition``."""
    if table is not None and table not in TABLES[edition]:
        raise ValueError(f"--table={table} is not in the {edition} edition; it has "
                         f"{', '.join(TABLES[edition])}")
    return [c for c in EDITIONS[edition]() if table is None or c.table == table]
