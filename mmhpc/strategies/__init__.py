"""Training strategies, each a small `Strategy` subclass in the `STRATEGIES` registry."""
from mmhpc.strategies.base import STRATEGIES, StepOutput, Strategy, register
# importing a module registers its strategies
from mmhpc.strategies import joint  # noqa: F401  naive, alternating (thesis Alg. 2-3)
from mmhpc.strategies import amst, selective  # noqa: F401  amst (Alg. 4), entropy, reliability (Alg. 5)
from mmhpc.strategies import mla, modulation, mslr, multiloss, pmr  # noqa: F401  the baselines

__all__ = ["STRATEGIES", "StepOutput", "Strategy", "register"]
