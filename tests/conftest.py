"""Shared fixtures: a private cache dir per test, and small RSNA-layout directories made on the fly.

The suite means the CPU: it hides every GPU from itself and from the commands it starts (before torch
first looks), so its results, bitwise repeats included, are the same on a GPU machine. The GPU path
is checked by scripts/gpu_smoke.py.
"""

from __future__ import annotations

import os

os.environ["CUDA_VISIBLE_DEVICES"] = ""

import functools  # noqa: E402
import logging  # noqa: E402
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from boneage_core.phantom import generate_image

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own cache dir, so no test sees another's cache or phantom."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("BONEAGE_CACHE_DIR", str(cache))
    return cache


@functools.lru_cache(maxsize=8)
def _hand(seed: int) -> np.ndarray:
    return (generate_image(seed, 0)[0] * 255).astype(np.uint8)


def hand_png(path: Path, seed: int, size=(96, 76), mode: str = "L") -> None:
    """A small phantom hand saved in the given mode (L, I;16, RGB, RGBA)."""
    img = np.asarray(Image.fromarray(_hand(seed % 4)).resize(size[::-1]))
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        Image.fromarray(img.astype(np.uint16) * 200).save(path)
    elif mode in ("RGB", "RGBA"):
        Image.fromarray(np.stack([img] * 3, -1), "RGB").convert(mode).save(path)
    else:
        Image.fromarray(img).save(path)


def make_kaggle(root: Path, n: int = 12, doubled: bool = False, male_values=("True", "False")) -> Path:
    img_dir = root / "boneage-training-dataset"
    if doubled:
        img_dir = img_dir / "boneage-training-dataset"
    rows = []
    for i in range(n):
        hand_png(img_dir / f"{1377 + i}.png", i)
        rows.append({"id": 1377 + i, "boneage": 20 + (15 * i) % 210, "male": male_values[i % len(male_values)]})
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "boneage-training-dataset.csv", index=False)
    return root


def make_official(root: Path, n_train: int = 10, n_val: int = 6, n_test: int = 4) -> Path:
    """The official RSNA release: training CSV, validation CSV over two image folders, test xlsx."""
    make_kaggle(root, n_train)
    val_dir = root / "Bone Age Validation Set"
    rows = []
    for i in range(n_val):
        folder = "boneage-validation-dataset-1" if i % 2 == 0 else "boneage-validation-dataset-2"
        hand_png(val_dir / folder / f"{9000 + i}.png", 100 + i)
        rows.append({"Image ID": 9000 + i, "male": "TRUE" if i % 2 else "FALSE", "Bone Age (months)": 30 + 20 * i})
    pd.DataFrame(rows).to_csv(val_dir / "Validation Dataset.csv", index=False)
    test_dir = root / "Bone Age Test Set"
    rows = []
    for i in range(n_test):
        hand_png(test_dir / "Test Set Images" / f"{4360 + i}.png", 200 + i)
        rows.append(
            {"Case ID": 4360 + i, "Sex": "M" if i % 2 else "F", "Ground truth bone age (months)": 50.0 + 30 * i}
        )
    pd.DataFrame(rows).to_excel(test_dir / "Bone age ground truth.xlsx", index=False)
    return root


@pytest.fixture
def kaggle_dir(tmp_path) -> Path:
    return make_kaggle(tmp_path / "kaggle")


@pytest.fixture
def official_dir(tmp_path) -> Path:
    return make_official(tmp_path / "rsna")


def run_cli(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """python -m search ARGS as a user runs it: a separate process, its own cwd."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "search", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )


def run_main(*args: str, cwd: Path, capsys) -> subprocess.CompletedProcess:
    """The CLI's main() in this process: the same parsing, dispatch and error handling as run_cli,
    without a second start of Python and torch (seconds each), for commands that stop before training.
    The signal handlers main() installs are put back afterwards."""
    from search.__main__ import main

    saved, here, handlers = signal.getsignal(signal.SIGTERM), os.getcwd(), list(logging.getLogger().handlers)
    capsys.readouterr()
    try:
        os.chdir(cwd)
        rc = main(list(args))
    except SystemExit as exc:  # argparse's errors
        rc = exc.code
    finally:
        os.chdir(here)
        signal.signal(signal.SIGTERM, saved)
        logging.getLogger().handlers[:] = handlers  # main's basicConfig wrote to this test's captured stderr
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), rc, out.out, out.err)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 2 and one line 'error: ...' naming the problem, as the last thing on stderr (a progress
    bar may come before it), and no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    for f in fragments:
        assert f.lower() in errors[0].lower(), (f, errors[0])
