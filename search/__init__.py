"""search: Optuna studies over boneage_core training runs. Never touches pixels.

Layers, each importing only those before it (tests/test_structure.py holds them to it):
config (study files, --set, the search space) -> storage (studies, their settings, provenance and
results) -> engine (search, baseline, retrain) -> reporting (status, report, figures, page) and bench
(the benchmarks) -> cli (the command line)."""
