"""The errors of mmhpc, their exit codes, and the one shape of a problem message.

This module is the bottom of the package: it imports nothing of mmhpc, so every layer may raise
these.

Exit-code policy of every `mmhpc` command (`exit_code` maps an exception to it):

    0  done 1  a run or job failed (RunError; the others ran and their records are kept) 2  bad
    input: a config, sweep file, cluster profile or argument (ConfigError), found before any work 3
    the scheduler failed: sbatch/squeue refused or could not be reached (SchedulerError) 130
    interrupted (Ctrl-C): one line; a run's record says `interrupted`

A problem is written `file: field: problem; valid: a, b, c`; the file part only when there is a
file, the field as a dotted path (`resources.time_min`, `runs[3].train.lr`), the valid part only
when the choices are known. A ConfigError holds one such line per problem.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

EXIT_RUN_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_SCHEDULER = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command ended by Ctrl-C


class MmhpcError(Exception):
    """Base of mmhpc's own errors; `exit_code` is what the command line returns for it."""

    exit_code = EXIT_RUN_FAILED


class ConfigError(MmhpcError, ValueError):
    """Bad input (config, sweep, cluster profile, argument): one `file: field: problem; valid: ...`
    per line."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, *problems: str):
        self.problems = [p for p in problems if p] or ["invalid configuration"]
        super().__init__("\n".join(self.problems))

    @classmethod
    def from_validation(cls, err: Any, file: str | None = None, prefix: Sequence[str | int] = (),
                        model: Any = None) -> ConfigError:
        """A ConfigError from a pydantic ValidationError; see `validation_problems`."""
        return cls(*validation_problems(err, file=file, prefix=prefix, model=model))


class RunError(MmhpcError, RuntimeError):
    """A run or a job failed (its failed record or log says why)."""

    exit_code = EXIT_RUN_FAILED


class SchedulerError(MmhpcError, RuntimeError):
    """The scheduler refused a submission or could not be reached."""

    exit_code = EXIT_SCHEDULER


def exit_code(exc: BaseException) -> int:
    """The command-line exit code for an exception (1 for anything not of mmhpc's own)."""
    return getattr(exc, "exit_code", EXIT_RUN_FAILED)


# ---- the message shape ---------------------------------------------------------------------------

def field_path(loc: Iterable[str | int]) -> str:
    """('runs', 3, 'train', 'lr') -> 'runs[3].train.lr'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def problem(
    field: str | Sequence[str | int] = "",
    text: str = "",
    valid: Iterable[Any] | None = None,
    file: str | None = None,
) -> str:
    """One problem line: `file: field: text; valid: a, b, c` (empty parts left out)."""
    if not isinstance(field, str):
        field = field_path(field)
    line = ": ".join(str(p) for p in (file, field, text) if p not in (None, ""))
    if valid is not None:
        line += f"; valid: {', '.join(map(str, valid))}"
    return line


# pydantic adds the union member or validator it tried to `loc` ('int', 'function-after[...]'): not
# fields
_TYPE_TAG = re.compile(r"^(?:[a-z_-]+\[.*\]|str|int|float|bool|none|list|dict|set|tuple)$")


def validation_problems(err: Any, file: str | None = None, prefix: Sequence[str | int] = (),
                        model: Any = None) -> list[str]:
    """One problem line per error of a pydantic v2 ValidationError.

    `prefix` is prepended to every field path (e.g. ('runs', 3)); `model` (the validated pydantic
    model class) lets an unknown key list the valid keys of the section it was found in.
    """
    lines: dict[str, list[str]] = {}
    valids: dict[str, list[str] | None] = {}
    for e in err.errors(include_url=False):
        loc = [p for p in e.get("loc", ()) if isinstance(p, int) or not _TYPE_TAG.match(str(p))]
        path = field_path([*prefix, *loc])
        text, valid = _describe(e, model, loc)
        if text not in lines.setdefault(path, []):
            lines[path].append(text)
        valids.setdefault(path, valid)
    return [problem(path, " or ".join(texts), valids[path], file) for path, texts in lines.items()]


def _describe(e: dict[str, Any], model: Any, loc: list[str | int]) -> tuple[str, list[str] | None]:
    kind, ctx, value = e.get("type", ""), e.get("ctx") or {}, e.get("input")
    if kind == "extra_forbidden":
        return "unknown key", _keys_at(model, loc[:-1])
    if kind in ("literal_error", "enum"):
        return f"invalid value {value!r}", _choices(str(ctx.get("expected", "")))
    if kind == "missing":
        return "required, missing", None
    if kind in _BOUNDS:
        op, key = _BOUNDS[kind]
        bound = ctx.get(key)
        return (
            f"{value} must be {op} {f'{bound:g}' if isinstance(bound, (int, float)) else bound}",
            None,
        )
    msg = str(e.get("msg", ""))
    for head in ("Value error, ", "Assertion failed, "):
        if msg.startswith(head):
            return msg[len(head):], None
    msg = msg[:1].lower() + msg[1:]
    return f"{msg}, got {value!r}", None


_BOUNDS = {
    "greater_than": (">", "gt"),
    "greater_than_equal": (">=", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("<=", "le"),
}


def _choices(expected: str) -> list[str]:
    """pydantic's "'a', 'b' or 'c'" -> ['a', 'b', 'c']."""
    parts = re.split(r", | or ", expected)
    return [p[1:-1] if len(p) > 1 and p[0] == p[-1] and p[0] in "'\"" else p for p in parts if p]


def _keys_at(model: Any, loc: list[str | int]) -> list[str] | None:
    """The field names of the (nested) pydantic model at `loc`, or None when it cannot be told."""
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if fields is None:
            return None
        if isinstance(part, int) or part not in fields:
            continue  # a list index or a dict key: the model inside is the item type
        model = _model_in(fields[part].annotation)
    fields = getattr(model, "model_fields", None)
    return list(fields) if fields is not None else None


def _model_in(annotation: Any) -> Any:
    """The pydantic model class in an annotation such as `Train`, `list[Run]`, `Run | None`."""
    if hasattr(annotation, "model_fields"):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None
