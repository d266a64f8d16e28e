"""search: Optuna studies over boneage_core training runs. Never touches pixels."""
