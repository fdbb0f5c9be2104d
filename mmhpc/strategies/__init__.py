"""Training strategies, each a small `Strategy` subclass in the `STRATEGIES` registry."""
from mmhpc.strategies.base import STRATEGIES, StepOutput, Strategy, register
from mmhpc.strategies import joint  # noqa: F401  (registers naive, alternating)

__all__ = ["STRATEGIES", "StepOutput", "Strategy", "register"]
