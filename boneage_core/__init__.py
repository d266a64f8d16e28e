"""boneage_core: bone-age regression from hand radiographs, in months. Never imports Optuna."""

from boneage_core.errors import BoneAgeError, DiskFailed, TrainingDiverged

__all__ = ["BoneAgeError", "DiskFailed", "TrainingDiverged"]
__version__ = "0.1.0"
