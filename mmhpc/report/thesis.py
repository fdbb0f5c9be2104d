"""The thesis' published results as data: `reports/thesis-results.csv` (a link to the copy shipped
in this package), one row per printed value.

Every value of the thesis' Tables 2.4, 2.5, 4.1-4.16 and A.1-A.13 (the tables the report mirrors),
with the printed table number, row and column labels, the value and its ± (`se`; `se_kind` says
whether the caption calls it a standard error or a standard deviation), the unit, and the keys a
measured run is matched on: `metric` (time_epoch_s, speedup, util_pct, util_gain, idle_s, acc, ibf,
bias, epochs), `gpu`, `batch_size`, `dataset`, `modalities` (`+`-joined, the thesis' IEMOCAP2 is
`iemocap` with `audio+visual`), `head` (which accuracy, bias or epoch count), `strategy`, `fusion`,
`axis` (what the table compares) and `setting` / `baseline` (the compared value; a speedup's
baseline). A dash in the thesis is an empty value; a `note` says why, and where the thesis text is
garbled or inconsistent.

    from mmhpc.report.thesis import thesis_values values = thesis_values()          # pandas
    DataFrame, validated row by row with pydantic
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from mmhpc.errors import problem

# shipped with the package (a non-editable install finds it); reports/thesis-results.csv links to it
THESIS_CSV = Path(__file__).with_name("thesis-results.csv")
METRICS = (
    "time_epoch_s",
    "speedup",
    "util_pct",
    "util_gain",
    "idle_s",
    "acc",
    "ibf",
    "bias",
    "epochs",
)
MODALITIES = ("audio", "visual", "text")


class ThesisValue(BaseModel):
    """One printed value of a thesis table."""

    model_config = ConfigDict(extra="forbid")
    table: str
    row: str
    column: str
    value: float | None
    se: float | None = None
    se_kind: Literal["", "SE", "SD"] = ""
    unit: Literal["", "s", "x", "%", "pp", "epochs"]
    metric: Literal[METRICS]
    gpu: Literal["", "A100", "A40"]
    batch_size: int | None
    dataset: Literal["cremad", "ave", "mvsa", "iemocap", "urfunny"]
    modalities: str = ""
    head: str = ""
    strategy: str = ""
    fusion: str = ""
    axis: Literal[
        "workers", "prefetch", "strategy", "precision", "loader", "parallelism", "overall"
    ]
    setting: str
    baseline: str = ""
    note: str = ""

    @field_validator("value", "se", "batch_size", mode="before")
    @classmethod
    def _empty_is_none(cls, v):
        return None if v == "" else v

    @field_validator("modalities")
    @classmethod
    def _known_modalities(cls, v: str) -> str:
        bad = [m for m in v.split("+") if v and m not in MODALITIES]
        if bad:
            raise ValueError(problem("", f"unknown modality {bad[0]!r}", MODALITIES))
        return v


@functools.lru_cache(maxsize=4)
def thesis_values(path: str | Path = THESIS_CSV) -> pd.DataFrame:
    """Every printed value, validated; ValueError naming the file, line and field of a bad row."""
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    rows = []
    for i, rec in enumerate(raw.to_dict("records"), start=2):  # line 1 is the header
        try:
            rows.append(ThesisValue.model_validate(rec).model_dump())
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(x) for x in err["loc"])
            raise ValueError(f"{path}: line {i}: {field}: {err['msg']}") from None
    frame = pd.DataFrame(rows)
    frame["modset"] = frame["modalities"].map(
        lambda s: frozenset(s.split("+")) if s else frozenset()
    )
    return frame


def cell(table: str, row: str, column: str, values: pd.DataFrame | None = None) -> ThesisValue:
    """The printed value at (table, row label, column label): cell("4.13", "AVE", "DDP Speedup")."""
    values = thesis_values() if values is None else values
    hit = values[(values["table"] == table) & (values["row"] == row) & (values["column"] == column)]
    if len(hit) != 1:
        raise KeyError(
            f"Table {table}: no single cell at row {row!r}, column {column!r} ({len(hit)} found)"
        )
    rec = hit.drop(columns="modset").iloc[0].to_dict()
    return ThesisValue.model_validate(
        {k: (None if isinstance(v, float) and v != v else v) for k, v in rec.items()}
    )
