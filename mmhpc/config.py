"""Typed run configuration: one `RunConfig` per run, serialised into every result.

Every knob lives in a dataclass field with its valid choices next to it. A config is built from
a YAML/JSON file plus `key=value` overrides and validated once, before any work starts: unknown
keys and bad values raise `ConfigError` naming the field and the valid choices.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from mmhpc.errors import ConfigError

FUSIONS = ("early_sum", "late_sum", "concat", "gated", "film")
MODALITIES = ("audio", "visual", "text")
PRECISIONS = ("fp32", "tf32", "bf16")
PARALLELISMS = ("single", "dp", "ddp", "blp")
PRESETS = ("tiny", "full")
DEVICES = ("auto", "cpu", "cuda")
OPTIMIZERS = ("sgd", "adam")


@dataclass
class DataConfig:
    dataset: str = field(default="cremad", metadata={"help": "dataset name", "choices_from": "datasets"})
    source: str = field(default="synthetic", metadata={"help": "synthetic: generate (cached) data; prepared: read `root`",
                                                       "choices": ("synthetic", "prepared")})
    preset: str = field(default="tiny", metadata={"help": "synthetic size preset", "choices": PRESETS})
    root: str | None = field(default=None, metadata={"help": "prepared dataset directory (source=prepared), or the "
                                                             "synthetic cache directory (default data/synthetic/...)"})
    modalities: list[str] | None = field(default=None, metadata={
        "help": "subset of the dataset's modalities to use (one modality = a single-modality baseline run)"})
    data_seed: int = field(default=0, metadata={"help": "seed of the synthetic generator"})
    verify: str = field(default="size", metadata={"help": "manifest check when loading",
                                                  "choices": ("none", "size", "checksum")})


@dataclass
class LoaderConfig:
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes"})
    prefetch_factor: int | None = field(default=None, metadata={"help": "batches prefetched per worker (workers > 0); 0: none, which PyTorch cannot do: "
                                   "the loader runs with 1 and the idle time is estimated (thesis Alg. 7)"})
    pin_memory: bool = field(default=False, metadata={"help": "page-locked host memory for faster H2D copies"})
    persistent_workers: bool = field(default=False, metadata={"help": "keep workers alive between epochs"})
    preinit: bool = field(default=False, metadata={"help": "threaded pre-initialisation of the next epoch's loader "
                                                           "(thesis Alg. 6)"})
    start_method: str = field(default="auto", metadata={
        "help": "how workers start; auto = fork, or forkserver for pre-initialised loaders (safe from threads)",
        "choices": ("auto", "fork", "forkserver", "spawn")})


@dataclass
class ModelConfig:
    fusion: str = field(default="concat", metadata={"help": "late-fusion mechanism", "choices": FUSIONS})
    embed_dim: int | None = field(default=None, metadata={
        "help": "common embedding width; default 512 (ResNet-18), or the text width when text is present"})
    cosine: bool = field(default=False, metadata={"help": "cosine classifier (thesis Sec. 3.1.2)"})
    cosine_scale: float | None = field(default=None, metadata={"help": "scale s; default from thesis Eq. 3.2"})
    control: str | None = field(default=None, metadata={
        "help": "control modality of gated/FiLM fusion (default: the first modality)"})
    text_size: str = field(default="auto", metadata={"help": "RoBERTa size: tiny, base, or auto (tiny for synthetic tiny data, else base)",
                                                     "choices": ("auto", "tiny", "base")})
    text_pretrained: str | None = field(default=None, metadata={
        "help": "local directory of pretrained RoBERTa weights (never downloaded)"})
    embedding_dropout: dict[str, float] = field(default_factory=dict, metadata={
        "help": "dropout rate on a modality's embedding, e.g. {audio: 0.4} (thesis Eq. 2.25)"})
    audio_augment: bool = field(default=False, metadata={"help": "time/frequency masking + noise on audio (Eq. 2.24)"})


@dataclass
class StrategyConfig:
    name: str = field(default="naive", metadata={"help": "training strategy", "choices_from": "strategies"})
    params: dict[str, Any] = field(default_factory=dict, metadata={"help": "strategy parameters (see `mmhpc strategies`)"})


@dataclass
class TrainConfig:
    epochs: int = field(default=100, metadata={"help": "training epochs (Entropy/Reliability: per-modality cap T)"})
    batch_size: int = field(default=64, metadata={"help": "global batch size"})
    optimizer: str = field(default="sgd", metadata={"help": "optimiser", "choices": OPTIMIZERS})
    lr: float = field(default=1e-3, metadata={"help": "learning rate (thesis Sec. 4.2)"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    weight_decay: float = field(default=1e-4, metadata={"help": "L2 weight decay (Eq. 2.26)"})
    lr_decay_epoch: int = field(default=70, metadata={"help": "epoch at which the LR is multiplied by lr_decay"})
    lr_decay: float = field(default=0.1, metadata={"help": "step decay factor"})
    seed: int = field(default=0, metadata={"help": "seed of model init, shuffling and augmentation"})
    max_batches: int | None = field(default=None, metadata={"help": "cap on training batches per epoch (smoke runs)"})
    single_acc: dict[str, float] | str | None = field(default=None, metadata={
        "help": "single-modality test accuracies for IBF: a {modality: acc} map or a path to run records/JSON"})


@dataclass
class SystemConfig:
    device: str = field(default="auto", metadata={"help": "compute device", "choices": DEVICES})
    precision: str = field(default="fp32", metadata={"help": "numeric precision", "choices": PRECISIONS})
    parallelism: str = field(default="single", metadata={"help": "parallelism", "choices": PARALLELISMS})
    blp_devices: dict[str, str] | None = field(default=None, metadata={
        "help": "BLP placement {modality: device}; default chosen from measured branch cost"})
    deterministic: bool = field(default=True, metadata={"help": "deterministic algorithms (bitwise repeatable on CPU)"})
    threads: int | None = field(default=None, metadata={"help": "torch intra-op threads (default: torch's choice)"})
    sample_interval: float = field(default=0.5, metadata={"help": "utilisation sampler interval in s (0 = off)"})


@dataclass
class OutputConfig:
    runs_dir: str = field(default="runs", metadata={"help": "directory of run records"})
    name: str | None = field(default=None, metadata={"help": "run name (default: derived from the config)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing finished record of the same name"})
    checkpoint: bool = field(default=False, metadata={
        "help": "save a checkpoint after every epoch; a rerun of the same config resumes from it (SLURM requeue)"})


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    system: SystemConfig = field(default_factory=SystemConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    # ---- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> "RunConfig":
        cfg = _build(cls, raw or {}, "")
        cfg.validate()
        return cfg

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, overrides: list[str] | dict[str, Any]) -> "RunConfig":
        raw = self.to_dict()
        apply_overrides(raw, overrides)
        return RunConfig.from_dict(raw)

    # ---- validation ----------------------------------------------------------------------------
    def validate(self) -> None:
        from mmhpc.data.specs import DATASETS
        from mmhpc.strategies import STRATEGIES

        for section in fields(self):
            obj = getattr(self, section.name)
            for f in fields(obj):
                choices = f.metadata.get("choices")
                value = getattr(obj, f.name)
                if choices and value not in choices:
                    _bad(f"{section.name}.{f.name}", value, choices)
        if self.data.dataset not in DATASETS:
            _bad("data.dataset", self.data.dataset, sorted(DATASETS))
        spec = DATASETS[self.data.dataset]
        mods = self.modalities
        for m in mods:
            if m not in spec.modalities:
                _bad("data.modalities", m, spec.modalities)
        if len(set(mods)) != len(mods) or not mods:
            raise ConfigError(f"data.modalities: {mods!r} must be a non-empty list without repeats")
        if self.data.source == "prepared" and not self.data.root:
            raise ConfigError("data.root: source=prepared needs the prepared dataset directory")
        if self.model.fusion in ("gated", "film") and len(mods) not in (1, 2):
            raise ConfigError(f"model.fusion: {self.model.fusion} fuses exactly two modalities, got {len(mods)} "
                              f"({', '.join(mods)}); choose one of early_sum, late_sum, concat or two modalities")
        if self.model.control is not None and self.model.control not in mods:
            _bad("model.control", self.model.control, mods)
        for m, p in self.model.embedding_dropout.items():
            if m not in mods:
                _bad("model.embedding_dropout", m, mods)
            if not 0.0 <= float(p) < 1.0:
                raise ConfigError(f"model.embedding_dropout.{m}: {p} must be in [0, 1)")
        if self.strategy.name not in STRATEGIES:
            _bad("strategy.name", self.strategy.name, sorted(STRATEGIES))
        STRATEGIES[self.strategy.name].check_config(self)
        _positive(self, "train.epochs", "train.batch_size", "train.lr")
        for name in ("loader.num_workers", "train.weight_decay", "train.momentum", "train.lr_decay_epoch"):
            if self.get(name) < 0:
                raise ConfigError(f"{name}: {self.get(name)} must be >= 0")
        if self.loader.prefetch_factor is not None and self.loader.prefetch_factor < 0:
            raise ConfigError(f"loader.prefetch_factor: {self.loader.prefetch_factor} must be >= 0 or null")
        if self.loader.prefetch_factor is not None and self.loader.num_workers == 0:
            raise ConfigError("loader.prefetch_factor: only valid with loader.num_workers > 0 "
                              "(PyTorch refuses prefetch_factor without workers)")
        if self.loader.persistent_workers and self.loader.num_workers == 0:
            raise ConfigError("loader.persistent_workers: needs loader.num_workers > 0")
        if self.loader.preinit and (self.loader.num_workers == 0 or self.loader.persistent_workers):
            raise ConfigError("loader.preinit: needs loader.num_workers > 0 and loader.persistent_workers=false "
                              "(it hides the start-up of fresh workers; without workers there is none to hide, "
                              "and a persistent loader's single iterator cannot be restarted ahead of time)")
        if self.train.max_batches is not None and self.train.max_batches < 1:
            raise ConfigError("train.max_batches: must be >= 1 or null")

    # ---- conveniences --------------------------------------------------------------------------
    @property
    def modalities(self) -> list[str]:
        from mmhpc.data.specs import DATASETS

        if self.data.modalities:
            return list(self.data.modalities)
        return list(DATASETS[self.data.dataset].modalities)

    def get(self, dotted: str) -> Any:
        obj: Any = self
        for part in dotted.split("."):
            obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
        return obj

    def run_name(self) -> str:
        if self.output.name:
            return self.output.name
        mods = "+".join(self.modalities)
        return (f"{self.data.dataset}-{self.data.preset}-{mods}-{self.model.fusion}-{self.strategy.name}"
                f"-{self.system.precision}-{self.system.parallelism}-bs{self.train.batch_size}-s{self.train.seed}")


# ---- building dataclasses from plain data ----------------------------------------------------------

def _bad(name: str, value: Any, choices) -> None:
    raise ConfigError(f"{name}: invalid value {value!r}; valid choices: {', '.join(map(str, choices))}")


def _positive(cfg: RunConfig, *names: str) -> None:
    for name in names:
        if cfg.get(name) <= 0:
            raise ConfigError(f"{name}: {cfg.get(name)} must be > 0")


def _build(cls, raw: Any, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = set(raw) - set(known)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"{where}{sorted(unknown)[0]}: unknown key; valid keys: {', '.join(known)}")
    kwargs = {}
    for name, value in raw.items():
        path = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, path)
        else:
            kwargs[name] = _coerce(value, tp, path)
    return cls(**kwargs)


def _coerce(value: Any, tp, path: str) -> Any:
    """Check `value` against a field type; accept the obvious string forms from the command line."""
    args = get_args(tp)
    if type(None) in args:  # Optional[...]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(value, a, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    origin = get_origin(tp) or tp
    if origin is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if origin is int:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: expected an integer, got {value!r}") from None
    if origin is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: expected a number, got {value!r}") from None
    if origin is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return str(value)
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v] if not value.startswith("[") else yaml.safe_load(value)
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (item,) = args
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        _, vt = args
        return {str(k): _coerce(v, vt, f"{path}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    raise TypeError(f"unsupported field type {tp} at {path}")


# ---- overrides and files --------------------------------------------------------------------------

def _leaf_index() -> dict[str, list[str]]:
    """Map each leaf field name to the dotted paths that end in it (for short overrides: fusion=...)."""
    index: dict[str, list[str]] = {}
    for section in fields(RunConfig):
        for f in fields(get_type_hints(RunConfig)[section.name]):
            index.setdefault(f.name, []).append(f"{section.name}.{f.name}")
    return index


def resolve_key(key: str) -> str:
    if "." in key:
        return key
    paths = _leaf_index().get(key)
    if not paths:
        if key in {f.name for f in fields(RunConfig)}:
            return key
        raise ConfigError(f"{key}: unknown key; use section.field, e.g. model.fusion; sections: "
                          f"{', '.join(f.name for f in fields(RunConfig))}")
    if len(paths) > 1:
        raise ConfigError(f"{key}: ambiguous key, write one of {', '.join(paths)}")
    return paths[0]


def apply_overrides(raw: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Apply `key=value` strings (YAML-parsed values) or a {dotted: value} map onto a raw config dict."""
    items = overrides.items() if isinstance(overrides, dict) else (_split(o) for o in overrides)
    for key, value in items:
        parts = resolve_key(key).split(".")
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {p} is not a section")
        node[parts[-1]] = value
    return raw


def _split(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. model.fusion=concat")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] = ()) -> RunConfig:
    raw: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        raw = (json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    apply_overrides(raw, overrides or [])
    return RunConfig.from_dict(raw)


def describe_fields() -> list[tuple[str, str, str, str]]:
    """(dotted name, type, default, help with choices) for every knob: used by `--help`."""
    from mmhpc.data.specs import DATASETS
    from mmhpc.strategies import STRATEGIES

    dynamic = {"datasets": sorted(DATASETS), "strategies": sorted(STRATEGIES)}
    rows = []
    defaults = RunConfig()
    hints = get_type_hints(RunConfig)
    for section in fields(RunConfig):
        sub_hints = get_type_hints(hints[section.name])
        for f in fields(hints[section.name]):
            choices = f.metadata.get("choices") or dynamic.get(f.metadata.get("choices_from", ""))
            help_ = f.metadata.get("help", "")
            if choices:
                help_ += f" [{'|'.join(map(str, choices))}]"
            tname = getattr(sub_hints[f.name], "__name__", None) or str(sub_hints[f.name]).replace("typing.", "")
            rows.append((f"{section.name}.{f.name}", tname, repr(defaults.get(f"{section.name}.{f.name}")), help_))
    return rows
