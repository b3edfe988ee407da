"""UCI Census-Income (KDD) with the two task groups of the MMoE paper (§6.3; MODELS.md E.1).

Download: https://archive.ics.uci.edu/dataset/117/census+income+kdd (``census-income.data.gz``,
``census-income.test.gz``). Licence CC BY 4.0; donors Terran Lane and Ronny Kohavi.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from mtlrec.data.bundle import DataBundle, load_files
from mtlrec.data.datasets import register_dataset
from mtlrec.errors import UserError, unknown_name
from mtlrec.schema import CategoricalFeature, NumericFeature, Schema, SchemaError, TaskSpec

COLUMNS = [
    "age",
    "class_worker",
    "det_ind_code",
    "det_occ_code",
    "education",
    "wage_per_hour",
    "hs_college",
    "marital_stat",
    "major_ind_code",
    "major_occ_code",
    "race",
    "hisp_origin",
    "sex",
    "union_member",
    "unemp_reason",
    "full_or_part_emp",
    "capital_gains",
    "capital_losses",
    "stock_dividends",
    "tax_filer_stat",
    "region_prev_res",
    "state_prev_res",
    "det_hh_fam_stat",
    "det_hh_summ",
    "instance_weight",
    "mig_chg_msa",
    "mig_chg_reg",
    "mig_move_reg",
    "mig_same",
    "mig_prev_sunbelt",
    "num_emp",
    "fam_under_18",
    "country_father",
    "country_mother",
    "country_self",
    "citizenship",
    "own_or_self",
    "vet_question",
    "vet_benefits",
    "weeks_worked",
    "year",
    "income_50k",
]
CONTINUOUS = ["age", "wage_per_hour", "capital_gains", "capital_losses", "stock_dividends", "num_emp", "weeks_worked"]
HEAVY_TAILED = {"wage_per_hour", "capital_gains", "capital_losses", "stock_dividends"}
DEGREES = [
    "Bachelors degree(BA AB BS)",
    "Masters degree(MA MS MEng MEd MSW MBA)",
    "Prof school degree (MD DDS DVM LLB JD)",
    "Doctorate degree(PhD EdD)",
]
# instance_weight is a sampling weight, never a feature (census-income.names); label sources are removed per group
NEVER_FEATURES = {"instance_weight", "income_50k"}
TASK_GROUPS = {
    1: {"tasks": ["income", "marital"], "drop": {"marital_stat"}},
    2: {"tasks": ["education", "marital"], "drop": {"marital_stat", "education"}},
}
#: input protocols. ``paper``: MODELS.md E.1, the MMoE paper (§6.3) followed by PLE: education and marital status
#: are removed from the inputs in BOTH task groups. ``mtlrec_v0``: the inputs of mtlrec's first census tables, which
#: keep ``education`` as an input in group 1 (only the label sources of the group's own tasks are removed).
#: In both, ``det_hh_fam_stat`` stays an input although some of its values spell out "never married" (every row
#: with such a value is never married: 69,408 of the 86,485 never-married training rows), which is why every model
#: reaches about 0.995 AUC on the marital task; the papers' data has the same column.
PROTOCOLS = {"paper": {"marital_stat", "education"}, "mtlrec_v0": None}


def derive_labels(table: pa.Table) -> pa.Table:
    """Add 0/1 label columns ``income_label`` (> 50K), ``marital_label`` (never married) and ``education_label``
    (Bachelors or higher)."""
    for col in ("income_50k", "marital_stat", "education"):
        if col not in table.column_names:
            raise SchemaError(f"census-income: missing column {col!r}; is this the 42-column KDD file?")
    income = pc.equal(table["income_50k"], "50000+.")
    marital = pc.equal(table["marital_stat"], "Never married")
    education = pc.is_in(table["education"], value_set=pa.array(DEGREES))
    for name, arr in (("income", income), ("marital", marital), ("education", education)):
        table = table.append_column(f"{name}_label", pc.cast(arr, pa.int8()))
    return table


def census_schema(
    group: int = 1, numeric_transform: str = "auto", n_buckets: int = 20, protocol: str = "mtlrec_v0"
) -> Schema:
    """``numeric_transform``: ``auto`` (log for the money columns, standardise the others), or one transform
    (``standardize``, ``log``, ``quantile``) for every continuous column. ``protocol``: which columns are inputs
    (:data:`PROTOCOLS`: ``paper`` or ``mtlrec_v0``)."""
    if group not in TASK_GROUPS:
        raise UserError(f"census_income: group must be 1 or 2, got {group!r}")
    if protocol not in PROTOCOLS:
        raise unknown_name("census_income protocol", protocol, PROTOCOLS)
    drop = NEVER_FEATURES | TASK_GROUPS[group]["drop"] | (PROTOCOLS[protocol] or set())
    feats = []
    for c in COLUMNS:
        if c in drop:
            continue
        if c in CONTINUOUS:
            tr = ("log" if c in HEAVY_TAILED else "standardize") if numeric_transform == "auto" else numeric_transform
            feats.append(NumericFeature(c, transform=tr, n_buckets=n_buckets))
        else:
            feats.append(CategoricalFeature(c))
    tasks = [TaskSpec(t, type="binary", label=f"{t}_label") for t in TASK_GROUPS[group]["tasks"]]
    return Schema(features=feats, tasks=tasks)


def file_columns(path: str | Path) -> list[str]:
    """The column names for one census file: the 42 KDD columns, preceded by ``row_id`` when the file carries a
    leading row-index column (43 fields, as in the 200-row ``census-income.sample`` cut from a DataFrame dump)."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
    n = len(first.rstrip("\r\n").split(","))
    if n == len(COLUMNS):
        return list(COLUMNS)
    if n == len(COLUMNS) + 1:
        return ["row_id", *COLUMNS]
    raise SchemaError(f"census-income: {path} has {n} comma-separated fields; expected {len(COLUMNS)} (KDD format)")


def default_data_dir() -> Path:
    return Path(os.environ.get("MTLREC_DATA_DIR", "../shared/data"))


@register_dataset(
    "census_income",
    description="UCI Census-Income KDD, MMoE task groups 1 (income, never "
    "married) and 2 (education, never married); train file = train, test file split 1:1 into "
    "valid/test; protocol paper (education, marital status never inputs) or mtlrec_v0 (default)",
    source="census-income.data.gz + census-income.test.gz in data_dir/census-income",
)
def load_census_income(
    data_dir: str | Path | None = None,
    group: int = 1,
    split_seed: int = 0,
    numeric_transform: str = "auto",
    n_buckets: int = 20,
    cache_dir: str | None = None,
    use_cache: bool = True,
    train_file: str = "census-income.data.gz",
    test_file: str = "census-income.test.gz",
    protocol: str = "mtlrec_v0",
) -> DataBundle:
    """``protocol``: ``mtlrec_v0`` (today's default: education stays an input in group 1) or ``paper`` (MODELS.md
    E.1: education and marital status are never inputs); see :data:`PROTOCOLS`."""
    root = Path(data_dir) if data_dir else default_data_dir()
    if (root / "census-income").is_dir():
        root = root / "census-income"
    train, test = root / train_file, root / test_file
    for f in (train, test):
        if not f.exists():
            raise FileNotFoundError(
                f"census-income: {f} not found; download census-income.data.gz and "
                "census-income.test.gz from the UCI repository (dataset 117) into one folder "
                "and pass it as data_dir"
            )
    columns = file_columns(train)
    if file_columns(test) != columns:
        raise SchemaError(f"census-income: {train} and {test} have different column counts")
    schema = census_schema(group, numeric_transform, n_buckets, protocol)
    return load_files(
        schema,
        train,
        None,
        test,
        name=f"census_income_g{group}" + ("" if protocol == "mtlrec_v0" else f"_{protocol}"),
        split_seed=split_seed,
        valid_test_split=0.5,
        read_options={
            "separator": ",",
            "column_names": columns,
            "null_values": [],
            "skip_initial_space": True,
            "string_columns": [c for c in columns if c not in CONTINUOUS],
        },
        transform=derive_labels,
        cache_dir=cache_dir,
        use_cache=use_cache,
    )
