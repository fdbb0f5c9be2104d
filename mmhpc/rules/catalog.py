"""`mmhpc strategies`: every registered strategy with its source, parameters and defaults and
fusions (every strategy runs on every parallelism: `mmhpc.system.runtime`). The parameters and
defaults are read from each strategy's typed `Params`, so the listing cannot drift from what
`strategy.params` accepts; the sources are those of docs/strategies.md's strategy table. Torch-free:
it reads the strategies' rules (`mmhpc.rules.strategies`), whose `Params` and fusions the trainer's
strategies inherit."""
from __future__ import annotations

import dataclasses

from mmhpc.names import PARALLELISMS
from mmhpc.rules.strategies import RULES

#: strategy.name -> where its algorithm and defaults come from (thesis = Optimising Multimodal
#: Learning with a System-Aware Perspective; code base = github CXianRen/AMST, code/)
SOURCES = {
    "naive": "thesis baseline: one joint loss",
    "alternating": "thesis Alg. 2 (sum/concat), Alg. 3 (gated/FiLM)",
    "amst": "thesis Alg. 4; AMST paper Alg. 1-2; code base amst.py",
    "entropy": "thesis Alg. 5, Eq. 3.5-3.6 (needs model.cosine=true)",
    "reliability": "thesis Alg. 5, Eq. 3.7 (needs model.cosine=true)",
    "ogm_ge": "thesis Eq. 2.27; code base ogm3_new.py; OGM-GE paper Alg. 2, Eq. 11, 16",
    "opm": "OPM/OGM paper Alg. 1, Eq. 8",
    "mslr": "thesis Eq. 2.28; code base mslr3_new.py",
    "pmr": "thesis Eq. 2.30; code base pmr3_new.py",
    "mla": "thesis Eq. 2.31-2.33; code base mla_new.py",
    "multi_loss": "MLB paper Eq. 3 (multi-loss baseline)",
    "mlb": "MLB paper Eq. 2-7",
    "gradient_blending": "thesis Eq. 2.29",
}


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return repr(field.default)
    if field.default_factory is not dataclasses.MISSING:
        return repr(field.default_factory())
    return "required"


def describe() -> str:
    lines = ["strategy.name: source; strategy.params (defaults); fusions (every strategy runs on "
             f"{', '.join(PARALLELISMS)})",
             "(differences between the thesis text, the papers and the code base: "
             "mmhpc/strategies/README.md)"]
    for name in sorted(RULES):
        cls = RULES[name]
        lines += ["", f"{name}: {SOURCES.get(name, '?')}"]
        fields = dataclasses.fields(cls.Params) if dataclasses.is_dataclass(cls.Params) else ()
        lines += [f"  params.{f.name} = {_default(f)}" for f in fields] or ["  no parameters"]
        lines.append(f"  fusions: {', '.join(cls.fusions)}")
    return "\n".join(lines)
