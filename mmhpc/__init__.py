"""mmhpc: a SLURM-native benchmark suite for multimodal late-fusion training."""

from mmhpc import preempt as _preempt

__version__ = "0.1.0"

# in a SLURM job: a pre-timeout signal during start-up is noted, not fatal (preempt.py)
_preempt.catch_early()
