"""The shared error shape: `file: field: problem; valid: a, b, c`, from pydantic errors and by
hand."""
from __future__ import annotations

from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from mmhpc.errors import (
    ConfigError,
    RunError,
    SchedulerError,
    exit_code,
    field_path,
    problem,
    validation_problems,
)


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    time_min: int = 10
    partition: Literal["alvis", "cpu"] = "alvis"

    @field_validator("time_min")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError(f"{v} must be > 0")
        return v


class Run(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lr: float
    max_batches: int | None = None


class Sweep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    resources: Resources = Resources()
    runs: list[Run] = []


def _problems(raw, **kw) -> list[str]:
    with pytest.raises(ValidationError) as info:
        Sweep.model_validate(raw)
    return validation_problems(info.value, model=Sweep, **kw)


def test_field_path_dots_and_indices():
    assert field_path(("runs", 3, "train", "lr")) == "runs[3].train.lr"
    assert field_path(()) == ""
    assert field_path((0, "a")) == "[0].a"


def test_problem_line_parts():
    assert problem("a.b", "bad", ["x", "y"], file="s.yaml") == "s.yaml: a.b: bad; valid: x, y"
    assert problem("a.b", "bad") == "a.b: bad"
    assert problem(("runs", 1, "lr"), "bad") == "runs[1].lr: bad"
    assert problem("", "empty file", file="s.yaml") == "s.yaml: empty file"


def test_literal_error_lists_choices_with_file():
    assert _problems({"resources": {"partition": "gpu"}}, file="sweep.yaml") == [
        "sweep.yaml: resources.partition: invalid value 'gpu'; valid: alvis, cpu"]


def test_unknown_key_lists_the_section_keys():
    assert _problems({"resources": {"time": 5}}) == [
        "resources.time: unknown key; valid: time_min, partition"
    ]
    assert _problems({"resorces": {}}) == ["resorces: unknown key; valid: resources, runs"]


def test_value_error_message_kept_and_list_index_in_path():
    lines = _problems({"resources": {"time_min": 0}, "runs": [{"lr": 0.1}, {"lr": "fast"}, {}]})
    assert lines[0] == "resources.time_min: 0 must be > 0"
    with pytest.raises(ValidationError) as info:
        TypeAdapter(Annotated[int, Field(ge=1)]).validate_python(0)
    assert validation_problems(info.value, prefix=("train", "max_batches")) == [
        "train.max_batches: 0 must be >= 1"
    ]
    assert lines[1].startswith("runs[1].lr: input should be a valid number") and lines[1].endswith(
        "got 'fast'"
    )
    assert lines[2] == "runs[2].lr: required, missing"


def test_optional_field_gives_one_line_without_type_tags():
    (line,) = _problems({"runs": [{"lr": 1, "max_batches": "many"}]})
    assert line.startswith("runs[0].max_batches: ")
    assert "int" not in line.split(":")[0]


def test_prefix_and_config_error_from_validation():
    with pytest.raises(ValidationError) as info:
        Run.model_validate({"lr": 1, "extra": 2})
    err = ConfigError.from_validation(info.value, file="f.yaml", prefix=("runs", 4), model=Run)
    assert err.problems == ["f.yaml: runs[4].extra: unknown key; valid: lr, max_batches"]
    assert str(err) == err.problems[0]


def test_exit_codes_policy():
    assert exit_code(ConfigError("x")) == 2
    assert exit_code(RunError("x")) == 1
    assert exit_code(SchedulerError("x")) == 3
    assert exit_code(KeyError("x")) == 1
    assert isinstance(
        ConfigError("x"), ValueError
    )  # older `except ValueError` callers still catch it


def test_config_error_still_importable_from_config():
    from mmhpc.config import ConfigError as Old

    assert Old is ConfigError


def test_choice_messages_go_through_errors_problem():
    """An unknown table kind or fusion names the field and the valid choices in the one format."""
    import pandas as pd

    from mmhpc.models.fusion import build_fusion
    from mmhpc.report.tables import KINDS, build_tables

    with pytest.raises(ValueError) as e:
        build_tables(pd.DataFrame(), ["nope"])
    assert str(e.value) == f"kind: invalid value 'nope'; valid: auto, {', '.join(KINDS)}"
    with pytest.raises(ValueError, match=r"^model.fusion: invalid value 'x'; valid: "):
        build_fusion("x", ["audio", "visual"], 8, 2, False, 1.0)


def _synth(dataset):
    from argparse import Namespace

    from mmhpc.cli import cmd_synth

    cmd_synth(Namespace(dataset=dataset, preset="tiny", seed=0, out=None))


def _cosine_form(form):
    from mmhpc.models.fusion import cosine_scale

    cosine_scale(6, form=form)


def _split(split):
    from mmhpc.data.dataset import PreparedDataset

    PreparedDataset("/nonexistent", split)


def _axis(key):
    from mmhpc.sweep import _axis_key

    _axis_key(key)


def _amst_phase(phase):
    from mmhpc.strategies.formulas import amst_trains

    amst_trains(0, 2, phase)


def _mslr_schedule(schedule):
    from mmhpc.strategies.formulas import mslr_schedule_factor

    mslr_schedule_factor([0.5], 2, schedule)


def _pmr_split(split):
    from mmhpc.rules.strategies import RULES

    RULES["pmr"].parse_params({"split": split})  # a Literal: pydantic refuses it with the choices


@pytest.mark.parametrize("call,bad,message", [
    (_synth, "bogus", "dataset: invalid value 'bogus'; valid: all, ave, cremad, iemocap, mvsa, "
     "urfunny"),
    (_cosine_form, "round", "form: invalid value 'round'; valid: printed, normface"),
    (_split, "dev", "split: invalid value 'dev'; valid: train, val, test"),
    (_axis, "resources.bogus", "resources.bogus: unknown key; valid: resources."),
    (_amst_phase, "late", "phase: invalid value 'late'; valid: code, paper"),
    (_mslr_schedule, "daily",
     "schedule: invalid value 'daily'; valid: as_run, compound, per_epoch"),
    (_pmr_split, "test", "strategy.params.split: invalid value 'test'; valid: train, val"),
])
def test_messages_listing_choices_have_the_one_shape(call, bad, message):
    """`field: invalid value 'x'; valid: a, b` (errors.problem), never a hand-made variant of it
    ("valid choices:", "valid keys:", "must be one of ..., got ...")."""
    with pytest.raises(ValueError) as e:
        call(bad)
    assert str(e.value).startswith(message), str(e.value)
