"""boneage_core: bone-age regression from hand radiographs, in months. Never imports Optuna."""

from boneage_core.errors import BoneAgeError, TrainingDiverged

__all__ = ["BoneAgeError", "TrainingDiverged"]
__version__ = "0.1.0"
