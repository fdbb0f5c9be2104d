"""Typed run configuration: one `RunConfig` per run, serialised into every record.

Every knob is a field of a pydantic model, with its type, default, help and (as a `Literal`) its
valid choices; the choices that belong to a registry (datasets, fusions, strategies) are asked of
the registry, so importing this module imports no model code and no strategy. A config is built from
a YAML/JSON file plus `key=value` overrides and validated once, before any work starts
(`RunConfig.from_dict`): every problem is one line `field: problem; valid: a, b, c` of a
`ConfigError` (`mmhpc.errors`).
"""
from __future__ import annotations

import difflib
import functools
import json
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from mmhpc import names
from mmhpc.data.specs import DATASETS
from mmhpc.errors import ConfigError, problem

Precision = Literal[tuple(names.PRECISIONS)]  # the one registry of system choices: mmhpc.names
Parallelism = Literal[tuple(names.PARALLELISMS)]
PRECISIONS: tuple[str, ...] = get_args(Precision)
PARALLELISMS: tuple[str, ...] = get_args(Parallelism)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, validate_default=False)

    @field_validator("*", mode="before")
    @classmethod
    def _command_line_forms(cls, value: Any, info: ValidationInfo) -> Any:
        """The obvious string forms of `key=value` overrides: none/null, `a,b` or `[a, b]`, `{k:
        v}`."""
        if not isinstance(value, str):
            return value
        kinds = _kinds(cls, info.field_name)
        if type(None) in kinds and value.strip().lower() in ("none", "null"):
            return None
        if list in kinds:
            return (
                yaml.safe_load(value)
                if value.lstrip().startswith("[")
                else [v for v in value.split(",") if v]
            )
        if dict in kinds and value.lstrip().startswith("{"):
            return yaml.safe_load(value)
        return value

    @field_validator("*")
    @classmethod
    def _in_registry(cls, value: Any, info: ValidationInfo) -> Any:
        """A field with `choices_from` takes a name of that registry."""
        source = _choices_from(cls, info.field_name)
        return _choice(value, registry(source)) if source else value


# What the two validators ask of a field, once per field rather than once per value (a 10,000-run
# sweep validates each field thousands of times).
@functools.cache
def _kinds(model: type[BaseModel], field: str) -> frozenset:
    """The types a field's annotation admits: {str, NoneType} for `str | None`."""
    annotation = model.model_fields[field].annotation
    return frozenset(get_origin(a) or a for a in (get_args(annotation) or (annotation,)))


@functools.cache
def _choices_from(model: type[BaseModel], field: str) -> str | None:
    """The registry whose names a field takes (`choices_from`), or None."""
    return (model.model_fields[field].json_schema_extra or {}).get("choices_from")


def registry(name: str) -> list[str]:
    """The valid names of a registry (datasets, fusions, strategies); from `mmhpc.names` for the
    model and strategy registries, whose modules import torch."""
    if name == "datasets":
        return sorted(DATASETS)
    if name == "fusions":
        return list(names.FUSIONS)
    if name == "strategies":
        return sorted(names.STRATEGIES)
    raise KeyError(f"no registry {name!r}")


def _choice(value: str, valid) -> str:
    if value not in valid:
        raise ValueError(problem("", f"invalid value {value!r}", valid))
    return value


class DataConfig(_Section):
    dataset: str = Field(
        "cremad", description="dataset name", json_schema_extra={"choices_from": "datasets"}
    )
    source: Literal["synthetic", "prepared"] = Field(
        "synthetic", description="synthetic: generate (cached) data; prepared: read `root`")
    preset: Literal["tiny", "full"] = Field("tiny", description="synthetic size preset")
    root: str | None = Field(
        None,
        description="prepared dataset directory (source=prepared), or the synthetic cache "
        "directory (default data/synthetic/...)",
    )
    modalities: list[str] | None = Field(
        None,
        description="subset of the dataset's modalities to use (one modality = a single-modality "
        "baseline run)",
    )
    data_seed: int = Field(0, description="seed of the synthetic generator")
    verify: Literal["none", "size", "checksum"] = Field(
        "size", description="manifest check when loading"
    )


class LoaderConfig(_Section):
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    prefetch_factor: int | None = Field(
        None,
        ge=0,
        description="batches prefetched per worker (workers > 0); 0: none, which PyTorch cannot "
        "do: "
        "the loader runs with 1 and the idle time is estimated (thesis "
        "Alg. 7)",
    )
    pin_memory: bool = Field(False, description="page-locked host memory for faster H2D copies")
    persistent_workers: bool = Field(False, description="keep workers alive between epochs")
    preinit: bool = Field(
        False, description="threaded pre-initialisation of the next epoch's loader (thesis Alg. 6)"
    )
    start_method: Literal["auto", "fork", "forkserver", "spawn"] = Field(
        "auto",
        description="how workers start; auto = fork (PyTorch's default; also after CUDA: workers "
        "never "
        "touch it), forkserver for pre-initialised loaders (safe from "
        "threads); forkserver "
        "spares the training process the copy-on-write faults of forking "
        "(README, benchmark c)",
    )


class ModelConfig(_Section):
    fusion: str = Field(
        "concat", description="late-fusion mechanism", json_schema_extra={"choices_from": "fusions"}
    )
    embed_dim: int | None = Field(
        None, gt=0,
        description="common embedding width; default 512 (ResNet-18), or the text width when text "
        "is present")
    cosine: bool = Field(False, description="cosine classifier (thesis Sec. 3.1.2)")
    cosine_scale: float | None = Field(
        None, gt=0, description="scale s; default from thesis Eq. 3.2"
    )
    control: str | None = Field(
        None, description="control modality of gated/FiLM fusion (default: the first modality)"
    )
    text_size: Literal["auto", "tiny", "base"] = Field(
        "auto",
        description="RoBERTa size: tiny, base, or auto (tiny for synthetic tiny data, else base)",
    )
    text_pretrained: str | None = Field(
        None, description="local directory of pretrained RoBERTa weights (never downloaded)"
    )
    embedding_dropout: dict[str, float] = Field(
        {},
        description="dropout rate on a modality's embedding, e.g. {audio: 0.4} (thesis Eq. 2.25)",
    )
    audio_augment: bool = Field(
        False, description="time/frequency masking + noise on audio (Eq. 2.24)"
    )


class StrategyConfig(_Section):
    name: str = Field(
        "naive", description="training strategy", json_schema_extra={"choices_from": "strategies"}
    )
    params: dict[str, Any] = Field({}, description="strategy parameters (see `mmhpc strategies`)")


class TrainConfig(_Section):
    epochs: int = Field(
        100, gt=0, description="training epochs (Entropy/Reliability: per-modality cap T)"
    )
    batch_size: int = Field(64, gt=0, description="global batch size")
    optimizer: Literal["sgd", "adam"] = Field("sgd", description="optimiser")
    lr: float = Field(1e-3, gt=0, description="learning rate (thesis Sec. 4.2)")
    momentum: float = Field(0.9, ge=0, description="SGD momentum")
    weight_decay: float = Field(1e-4, ge=0, description="L2 weight decay (Eq. 2.26)")
    lr_decay_epoch: int = Field(
        70, ge=0, description="epoch at which the LR is multiplied by lr_decay"
    )
    lr_decay: float = Field(0.1, description="step decay factor")
    seed: int = Field(0, description="seed of model init, shuffling and augmentation")
    max_batches: int | None = Field(
        None, ge=1, description="cap on training batches per epoch (smoke runs)"
    )
    single_acc: dict[str, float] | str | None = Field(
        None,
        description="single-modality test accuracies for IBF: a {modality: acc} map or a path to "
        "run "
        "records/JSON",
    )


class SystemConfig(_Section):
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="compute device")
    precision: Precision = Field("fp32", description="numeric precision")
    parallelism: Parallelism = Field("single", description="parallelism")
    blp_devices: dict[str, str] | None = Field(
        None,
        description="BLP placement {modality: device}; default chosen from measured branch cost",
    )
    deterministic: bool = Field(
        True, description="deterministic algorithms (bitwise repeatable on CPU)"
    )
    threads: int | None = Field(
        None, gt=0, description="torch intra-op threads (default: torch's choice)"
    )
    sample_interval: float = Field(
        0.5, ge=0, description="utilisation sampler interval in s (0 = off)"
    )


class OutputConfig(_Section):
    runs_dir: str = Field("runs", description="directory of run records")
    name: str | None = Field(None, description="run name (default: derived from the config)")
    overwrite: bool = Field(
        False, description="replace an existing finished record of the same name"
    )
    checkpoint: bool = Field(
        False,
        description="save a checkpoint after every epoch; a rerun of the same config "
        "resumes from it (SLURM requeue)",
    )


class RunConfig(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    loader: LoaderConfig = Field(default_factory=LoaderConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    system: SystemConfig = Field(default_factory=SystemConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    # ---- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None, file: str | None = None) -> RunConfig:
        """Validate plain data (types and choices, then the rules between fields); ConfigError on
        any problem."""
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError(
                problem("", f"expected a mapping of sections, got {type(raw).__name__}", file=file)
            )
        try:
            cfg = cls.model_validate(raw or {})
        except ValidationError as e:
            raise ConfigError.from_validation(e, file=file, model=cls) from None
        cfg.validate()
        return cfg

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, overrides: list[str] | dict[str, Any]) -> RunConfig:
        raw = self.to_dict()
        apply_overrides(raw, overrides)
        return RunConfig.from_dict(raw)

    # ---- the rules between fields ----------------------------------------------------------------
    def validate(self) -> None:
        """The rules that involve several fields or a registry's entry; all problems in one
        ConfigError."""
        problems = self.problems()
        if problems:
            raise ConfigError(*problems)

    def problems(self) -> list[str]:
        out = self._data_problems() + self._model_problems() + self._loader_problems()
        if not out:  # the strategy's own rules assume a consistent config
            from mmhpc.rules.strategies import RULES  # torch-free; the strategies inherit them

            try:
                RULES[self.strategy.name].check_config(self)
            except ConfigError as e:
                out += e.problems
        return out

    def _data_problems(self) -> list[str]:
        out: list[str] = []
        spec = DATASETS[self.data.dataset]
        mods = self.modalities
        for m in mods:
            if m not in spec.modalities:
                out.append(
                    problem(
                        "data.modalities",
                        f"invalid value {m!r} for {self.data.dataset}",
                        spec.modalities,
                    )
                )
        if len(set(mods)) != len(mods) or not mods:
            out.append(
                problem("data.modalities", f"{mods!r} must be a non-empty list without repeats")
            )
        if self.data.source == "prepared" and not self.data.root:
            out.append(problem("data.root", "source=prepared needs the prepared dataset directory"))
        return out

    def _model_problems(self) -> list[str]:
        out: list[str] = []
        mods = self.modalities
        if self.model.fusion in names.TWO_MODALITY and len(mods) not in (1, 2):
            out.append(
                problem(
                    "model.fusion",
                    f"{self.model.fusion} fuses exactly two modalities, got {len(mods)} "
                    f"({', '.join(mods)}); choose two modalities or another fusion",
                    names.SYMMETRIC,
                )
            )
        if self.model.control is not None and self.model.control not in mods:
            out.append(problem("model.control", f"invalid value {self.model.control!r}", mods))
        for m, p in self.model.embedding_dropout.items():
            if m not in mods:
                out.append(
                    problem(f"model.embedding_dropout.{m}", "not a modality of this run", mods)
                )
            if not 0.0 <= p < 1.0:
                out.append(problem(f"model.embedding_dropout.{m}", f"{p} must be in [0, 1)"))
        return out

    def _loader_problems(self) -> list[str]:
        out: list[str] = []
        lo = self.loader
        if lo.prefetch_factor is not None and lo.num_workers == 0:
            out.append(problem("loader.prefetch_factor", "only valid with loader.num_workers > 0 "
                               "(PyTorch refuses prefetch_factor without workers)"))
        if lo.persistent_workers and lo.num_workers == 0:
            out.append(problem("loader.persistent_workers", "needs loader.num_workers > 0"))
        if lo.preinit and (lo.num_workers == 0 or lo.persistent_workers):
            out.append(
                problem(
                    "loader.preinit",
                    "needs loader.num_workers > 0 and loader.persistent_workers=false "
                    "(it hides the start-up of fresh workers; without workers there is "
                    "none to hide, and a persistent loader's single iterator cannot be "
                    "restarted ahead of time)",
                )
            )
        return out

    # ---- conveniences --------------------------------------------------------------------------
    @property
    def modalities(self) -> list[str]:
        if self.data.modalities:
            return list(self.data.modalities)
        return list(DATASETS[self.data.dataset].modalities)

    def get(self, dotted: str) -> Any:
        obj: Any = self
        for part in dotted.split("."):
            obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
        return obj

    def record_path(self) -> Path:
        """Where this run's record is written and read (see `mmhpc.results.record_file`)."""
        from mmhpc.results import record_file

        return record_file(self.output.runs_dir, self.run_name())

    def run_name(self) -> str:
        if self.output.name:
            return self.output.name
        mods = "+".join(self.modalities)
        d, m, sy, t = self.data, self.model, self.system, self.train
        return (
            f"{d.dataset}-{d.preset}-{mods}-{m.fusion}-{self.strategy.name}"
            f"-{sy.precision}-{sy.parallelism}-bs{t.batch_size}-s{t.seed}"
        )


# ---- overrides and files
# --------------------------------------------------------------------------

def _sections() -> dict[str, type[_Section]]:
    return {name: f.annotation for name, f in RunConfig.model_fields.items()}


def _leaf_index() -> dict[str, list[str]]:
    """Map each leaf field name to the dotted paths that end in it (for short overrides:
    fusion=...)."""
    index: dict[str, list[str]] = {}
    for section, model in _sections().items():
        for name in model.model_fields:
            index.setdefault(name, []).append(f"{section}.{name}")
    return index


def resolve_key(key: str) -> str:
    if "." in key:
        return key
    paths = _leaf_index().get(key)
    if not paths:
        if key in RunConfig.model_fields:
            return key
        close = difflib.get_close_matches(key, list(_leaf_index()), n=1)
        hint = f"; did you mean {', '.join(_leaf_index()[close[0]])}" if close else ""
        raise ConfigError(problem(key, f"unknown key{hint}; use section.field, e.g. model.fusion",
                                  list(RunConfig.model_fields)))
    if len(paths) > 1:
        raise ConfigError(problem(key, "ambiguous key", paths))
    return paths[0]


def apply_overrides(raw: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Apply `key=value` strings (YAML-parsed values) or a {dotted: value} map onto a raw config
    dict."""
    items = overrides.items() if isinstance(overrides, dict) else (_split(o) for o in overrides)
    for key, value in items:
        parts = resolve_key(key).split(".")
        if len(parts) == 1 and parts[0] in RunConfig.model_fields and not isinstance(value, dict):
            raise ConfigError(
                problem(
                    key,
                    f"a section, not a value{_field_taking(parts[0], value)}",
                    [f"{parts[0]}.{f}" for f in _sections()[parts[0]].model_fields],
                )
            )
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(problem(key, f"{p} is not a section"))
        node[parts[-1]] = value
    return raw


def _field_taking(section: str, value: Any) -> str:
    """"; did you mean strategy.name=alternating": the section's fields of fixed choices that take
    `value`."""
    model = _sections()[section]
    fits = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if get_origin(annotation) is not Literal and not (field.json_schema_extra or {}).get(
            "choices_from"
        ):
            continue
        try:
            model.model_validate({name: value})
        except ValidationError:
            continue
        fits.append(f"{section}.{name}={value}")
    return f"; did you mean {' or '.join(fits)}" if fits else ""


def _split(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(
            problem(f"override {item!r}", "expected key=value, e.g. model.fusion=concat")
        )
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def read_input(path: str | Path, error=ConfigError) -> str:
    """An input file's text; a file that is missing, unreadable, a directory or not UTF-8 text is
    one problem line naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise error(problem("", f"cannot read: {e.strerror}", file=str(path))) from None
    except UnicodeDecodeError as e:
        raise error(
            problem(
                "",
                f"not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}): a YAML "
                "or JSON file was expected",
                file=str(path),
            )
        ) from None


def read_yaml(path: str | Path, error=ConfigError) -> Any:
    """A YAML file's data; a syntax error is one problem line naming the file, line and column."""
    text = read_input(path, error)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(e, "problem", None) or str(e)
        raise error(problem("", f"YAML syntax error{where}: {what}", file=str(path))) from None


def load_config(
    path: str | Path | None = None, overrides: list[str] | dict[str, Any] = ()
) -> RunConfig:
    """A config file (YAML, or JSON by its suffix) plus overrides, validated; problems name the
    file."""
    raw: dict[str, Any] = {}
    if path is not None:
        if str(path).endswith(".json"):
            try:
                raw = json.loads(read_input(path))
            except ValueError as e:
                raise ConfigError(problem("", f"not valid JSON: {e}", file=str(path))) from None
        else:
            raw = read_yaml(path)
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise ConfigError(problem("", "expected a mapping at the top level", file=str(path)))
    apply_overrides(raw, overrides or [])
    return RunConfig.from_dict(raw, file=str(path) if path is not None and not overrides else None)


def describe_fields() -> list[tuple[str, str, str, str]]:
    """(dotted name, type, default, help with choices) for every knob: used by `--help`."""
    rows = []
    defaults = RunConfig()
    for section, model in _sections().items():
        for name, f in model.model_fields.items():
            literal = [
                a for a in (get_args(f.annotation) or ()) if get_origin(f.annotation) is Literal
            ]
            source = (f.json_schema_extra or {}).get("choices_from")
            choices = literal or (registry(source) if source else None)
            help_ = f.description or ""
            if choices:
                help_ += f" [{'|'.join(map(str, choices))}]"
            tname = "str" if literal else (getattr(f.annotation, "__name__", None) or
                                           str(f.annotation).replace("typing.", ""))
            rows.append(
                (f"{section}.{name}", tname, repr(defaults.get(f"{section}.{name}")), help_)
            )
    return rows
