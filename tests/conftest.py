"""Shared fixtures: a private cache dir per test, small RSNA-layout directories made on the fly, the tiny
study most search tests run (40 phantom hands, 32 px, a small timm net), a scratch PostgreSQL database,
and the ways to run the CLI (in this process, or as a user's separate process).

The suite means the CPU: it hides every GPU from itself and from the commands it starts (before torch
first looks), so its results, bitwise repeats included, are the same on a GPU machine. The GPU path
is checked by scripts/gpu_smoke.py.
"""

from __future__ import annotations

import os

os.environ["CUDA_VISIBLE_DEVICES"] = ""

import functools  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from PIL import Image  # noqa: E402

from boneage_core.phantom import generate_image, write_phantom  # noqa: E402
from search.bench import DEFAULT_POSTGRES_URL  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own cache dir, so no test sees another's cache or phantom. And no report
    draws PNG copies (kaleido starts a Chromium per figure: with the [png] extra installed the suite
    took 9 minutes instead of 5); tests/test_retrain_report.py turns them back on where it checks them."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("BONEAGE_CACHE_DIR", str(cache))
    monkeypatch.setenv("BONEAGE_PNG", "0")
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


def bomb_png(path: Path, side: int = 60000) -> None:
    """A tiny PNG whose header claims side x side pixels: a decompression bomb, never to be decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def corrupt_but_whole_png(path: Path) -> None:
    """A PNG that ends with its IEND marker (so the quick screen passes) but whose pixel data is garbage:
    only decoding finds it."""
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 4
    data[start : start + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))


def break_image(path: Path, kind: str) -> None:
    """Turn a good image into one of the ways a file does not arrive whole (BAD_FILES)."""
    if kind == "missing":
        path.unlink()
    elif kind == "corrupt pixel data":
        corrupt_but_whole_png(path)
    elif kind == "zero-byte":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "not an image":
        path.write_bytes(b"<html>403 Forbidden</html>")
    elif kind == "1x1":
        Image.new("L", (1, 1)).save(path)
    elif kind == "decompression bomb":
        bomb_png(path)
    elif kind == "fifo":
        path.unlink()
        os.mkfifo(path)
    elif kind == "dangling symlink":
        path.unlink()
        path.symlink_to(path.parent / "gone.png")
    elif kind == "self-referencing symlink":
        path.unlink()
        path.symlink_to(path)


BAD_FILES = [  # each found by the quick screen of every command; "corrupt pixel data" only by decoding
    ("missing", "missing"),
    ("zero-byte", "empty file"),
    ("truncated", "truncated"),
    ("not an image", "not an image file"),
    ("1x1", "1x1 px, too small"),
    ("decompression bomb", "decompression bomb"),
    ("fifo", "not a regular file"),
    ("dangling symlink", "broken symlink"),
    ("self-referencing symlink", "symlink loop"),
]


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
    """The CLI's main() in this process: the same parsing, dispatch, error handling and output as
    run_cli, without a second start of Python and torch (seconds each). Log records reach stderr as in
    a process of their own (pytest's log capture would otherwise keep them); the signal handlers main()
    installs are put back afterwards."""
    from search.cli.main import main

    saved, here = signal.getsignal(signal.SIGTERM), os.getcwd()
    capsys.readouterr()
    to_stderr = logging.StreamHandler(sys.stderr)  # the captured stderr of this test
    to_stderr.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    to_stderr.setLevel(logging.WARNING)
    logging.getLogger().addHandler(to_stderr)
    try:
        os.chdir(cwd)
        rc = main(list(args))
    except SystemExit as exc:  # argparse's errors
        rc = exc.code
    finally:
        os.chdir(here)
        signal.signal(signal.SIGTERM, saved)
        logging.getLogger().removeHandler(to_stderr)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), rc, out.out, out.err)


def main_ok(*args: str, cwd: Path, capsys) -> subprocess.CompletedProcess:
    """run_main that must succeed; its output for the test to read."""
    r = run_main(*args, cwd=cwd, capsys=capsys)
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    return r


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


TINY_STUDY = """
[study]
heartbeat_interval = 1
grace_period = 3
[data]
source = "{source}"
image_size = 32
phantom_n = 40
[train]
backbone = "timm:resnet10t"
epochs = 2
batch_size = 8
head_hidden = 16
[space.lr]
type = "float"
low = 1e-4
high = 1e-2
log = true
[space.aug_strength]
type = "float"
low = 0.0
high = 1.0
[sampler]
name = "tpe"
seed = 0
n_startup_trials = 3
[pruner]
name = "median"
n_startup_trials = 2
[baseline]
backbone = "timm:resnet10t"
pretrained = "none"
epochs = 2
batch_size = 8
head_hidden = 16
"""


@pytest.fixture(scope="session")
def phantom_src(tmp_path_factory):
    """40 phantom hands in the Kaggle layout, written once for the whole suite."""
    return write_phantom(tmp_path_factory.mktemp("ph") / "phantom", 40, seed=0)


@pytest.fixture(scope="session")
def other_phantom(tmp_path_factory):
    """Another 40 hands (seed 1): other data for a study made on phantom_src."""
    return write_phantom(tmp_path_factory.mktemp("ph1") / "phantom", 40, seed=1)


@pytest.fixture
def study(tmp_path, phantom_src):
    """The tiny study's TOML in this test's directory: studies/tiny.db lands beside it."""
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_STUDY.format(source=phantom_src))
    return path


def load(tmp_path, url=None) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=url or f"sqlite:///{tmp_path}/studies/tiny.db")


def finished(study: optuna.Study) -> list:
    return [t for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def _as_at_a_terminal():
    """SIGINT back to its default in the child, as a shell gives it to a command run at a terminal.
    When the tests themselves run as a background job of a non-interactive shell, SIGINT arrives
    ignored, Python then leaves it ignored, and Ctrl-C could not be tested."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_run(cwd, study, *extra, stderr=subprocess.PIPE) -> subprocess.Popen:
    """`python -m search run` in the background, as a user in directory cwd would start it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "search", "run", "--study", str(study), *extra, "--quiet"],
        cwd=cwd,
        env=env,
        stderr=stderr,
        text=True,
        preexec_fn=_as_at_a_terminal,
    )


@pytest.fixture
def postgres_url():
    """A scratch database on the server at 127.0.0.1:5432, dropped after the test (the same helper the
    storage benchmark uses)."""
    pytest.importorskip("psycopg")
    from search.bench.storage import scratch_postgres

    with scratch_postgres(DEFAULT_POSTGRES_URL) as url:
        if url is None:
            pytest.skip(f"PostgreSQL at {DEFAULT_POSTGRES_URL} is not reachable")
        yield url


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MB tmpfs, unmounted afterwards; skipped where this machine lets no one mount one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'mount failed'})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
