"""Post-training methods, one file each."""

from quanta.methods.bn_fold import fold_batchnorm

__all__ = ["fold_batchnorm"]
