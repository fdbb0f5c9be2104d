"""Training strategies, each a small `Strategy` subclass in the `STRATEGIES` registry.

Importing a module registers its strategies: joint (naive, alternating; thesis Alg. 2-3), amst (Alg.
4), selective (entropy, reliability; Alg. 5), and the baselines (mla, modulation, mslr, multiloss,
pmr).
"""
from mmhpc.strategies import (  # noqa: F401 (each module registers its strategies)
    amst,
    joint,
    mla,
    modulation,
    mslr,
    multiloss,
    pmr,
    selective,
)
from mmhpc.strategies.base import STRATEGIES, StepOutput, Strategy, register

__all__ = ["STRATEGIES", "StepOutput", "Strategy", "register"]
