"""mmhpc: a SLURM-native benchmark suite for multimodal late-fusion training."""

__version__ = "0.1.0"
