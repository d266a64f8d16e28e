"""The project as a user installs it: a wheel in a fresh virtual environment, run from an empty directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import REPO

PACKAGES = ("boneage_core", "search")  # the two top-level packages the wheel installs
STUDIES = ("demo", "gpu-demo", "rsna")


def _ok(command: list, **kwargs) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=120, **kwargs)
    assert r.returncode == 0, (command, r.stdout[-2000:], r.stderr[-2000:])
    return r


def test_an_installed_wheel_runs_the_packaged_demo_study_from_an_empty_directory(tmp_path):
    """The wheel holds search/config/studies/*.toml and a venv with only that wheel installed runs `run` and
    `status` of the default study (demo, shrunk by --set) from an empty directory, reading the
    packaged study file, never the checkout. The new venv borrows this one's dependencies through a
    .pth path line (no torch install); that line adds the directory without running the .pth files in
    it, so this checkout's editable install stays out of sight."""
    no_setuptools = "setuptools is not installed: the wheel is built without build isolation (no network)"
    pytest.importorskip("setuptools", reason=no_setuptools)
    src = tmp_path / "src"  # a copy to build from: the build leaves build/ and *.egg-info in its source
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in PACKAGES:
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"HOME": str(tmp_path / "home"), "BONEAGE_CACHE_DIR": str(tmp_path / "cache")}  # phantom, caches
    _ok([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels, src], env=env)
    (wheel,) = wheels.glob("boneage_search-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"search/config/studies/{s}.toml" for s in STUDIES} <= set(names)
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == set(PACKAGES)

    venv = tmp_path / "venv"  # without pip of its own: this venv's pip, found through deps.pth, installs
    _ok([sys.executable, "-m", "venv", "--without-pip", venv], env=env)
    python = venv / "bin" / "python"
    site = Path(_ok([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _ok([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", wheel], env=env)

    empty = tmp_path / "empty"
    empty.mkdir()
    packaged = site / "search" / "config" / "studies" / "demo.toml"
    where = "import search.config.specs as s; print(s.__file__); print(s.find_study_file('demo'))"
    module, study_file = _ok([python, "-c", where], cwd=empty, env=env).stdout.split()
    assert Path(module).resolve() == (site / "search" / "config" / "specs.py").resolve()  # the wheel's, not REPO's
    assert Path(study_file).resolve() == packaged.resolve()
    tiny = ["data.phantom_n=40", "data.image_size=32", "train.epochs=1", "train.backbone=timm:resnet10t"]
    tiny += ["train.head_hidden=16", "space.batch_size.choices=[8]", "baseline.batch_size=8"]
    sets = [arg for item in tiny for arg in ("--set", item)]
    _ok([python, "-m", "search", "run", "--trials", "2", "--quiet", *sets], cwd=empty, env=env)
    status = _ok([python, "-m", "search", "status"], cwd=empty, env=env).stdout
    assert "study demo: 2 trials: " in status, status
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{empty / 'studies' / 'demo.db'}")
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.get_trials()) == 2
