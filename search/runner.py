"""Run a study until it holds N finished trials: resume, workers, heartbeat retry, Ctrl-C, timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass

import optuna
import sqlalchemy.exc
import torch
from optuna.trial import TrialState
from tqdm import tqdm

from boneage_core import BoneAgeError
from boneage_core.dataset import Prepared, prepare
from boneage_core.train import Split
from search.objective import TRIAL_FAILURES, BudgetReached, make_objective
from search.record import check_settings, device_description, provenance, record_command, study_settings
from search.specs import StudySpec
from search.storage import check_url, open_storage, redact, scrub, storage_fault

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
STORAGE_ERRORS = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    optuna.exceptions.StorageInternalError,
)
STORAGE_OUTAGE_LIMIT_S = 180
WORKER_ENV = "BONEAGE_WORKER_INDEX"  # set in the worker processes that `run --workers K` starts
WORKERS_ENV = "BONEAGE_WORKERS"
SHARE_ENV = "BONEAGE_GPU_SHARE"  # the part of its GPU's memory a worker may plan for


@dataclass
class RunOutcome:
    finished: int
    pruned: int
    failed: int
    best_value: float | None
    timed_out: bool


def make_sampler(spec: StudySpec, offset: int) -> optuna.samplers.BaseSampler:
    """The sampler seeded by the study seed plus how far the study already is (and the worker), so a
    resumed or parallel run continues the sequence instead of re-proposing the same start-up points."""
    seed = int(spec.sampler.get("seed", 0)) + offset
    if spec.sampler["name"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.sampler.get("n_startup_trials", 10))


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    p, epochs = spec.pruner, spec.train.epochs
    if p["name"] == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.get("n_startup_trials", 5), n_warmup_steps=p.get("n_warmup_steps", 1)
        )
    if p["name"] == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=p.get("min_resource", 1), max_resource=epochs, reduction_factor=p.get("reduction_factor", 3)
        )
    if p["name"] == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=p.get("min_resource", 1), reduction_factor=p.get("reduction_factor", 3)
        )
    return optuna.pruners.NopPruner()


def load_study(spec: StudySpec, url: str, offset: int = 0, heartbeat: bool = True) -> optuna.Study:
    storage = open_storage(url, heartbeat=(spec.heartbeat_interval_s, spec.grace_period_s) if heartbeat else None)
    # Optuna logs every failed trial with its traceback; the runner prints one line instead, and the
    # reason is stored in the trial's fail_reason attr
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        direction="minimize",
        sampler=make_sampler(spec, offset),
        pruner=make_pruner(spec),
        load_if_exists=True,
    )
    return study


def counts(study: optuna.Study) -> dict[TrialState, int]:
    out = dict.fromkeys(TrialState, 0)
    for t in study.get_trials(deepcopy=False):
        out[t.state] += 1
    return out


def prepare_search_data(
    spec: StudySpec, quiet: bool, splits: tuple[str, ...] = ("train", "val"), image_size: int | None = None
) -> Prepared:
    """The study's data at image_size (default data.image_size), decoded into the cache. Train and val
    only by default: the test split is never read by the search; retrain asks for it."""
    d = spec.data
    return prepare(
        d["source"],
        image_size or d["image_size"],
        seed=d["seed"],
        max_images=d["max_images"],
        phantom_n=d["phantom_n"],
        quiet=quiet,
        splits=splits,
    )


class StudyData:
    """The study's splits at every image size a trial asks for: each size is decoded into the cache
    once (on disk, shared by workers) and held here once per process. The rows and their order do not
    depend on the size, so every size sees the same images in the same split."""

    def __init__(self, spec: StudySpec, quiet: bool, splits: tuple[str, ...] = ("train", "val")):
        self.spec, self.quiet, self.splits = spec, quiet, splits
        self._held: dict[tuple[int, tuple[str, ...]], Split] = {}
        self._prepared: dict[int, Prepared] = {}

    def fingerprint(self) -> str:
        """The data's identity (boneage_core.data.data_fingerprint): the same at every image size."""
        if not self._prepared:
            self.split(self.spec.train.image_size, self.splits[0])
        return next(iter(self._prepared.values())).fingerprint

    def split(self, image_size: int, *names: str) -> Split:
        key = (image_size, names)
        if key not in self._held:
            if image_size not in self._prepared:
                self._prepared[image_size] = prepare_search_data(self.spec, self.quiet, self.splits, image_size)
            self._held[key] = self._prepared[image_size].split(*names)
        return self._held[key]


WORKER_MEMORY_BYTES = 2 * 1024**3  # what one worker process holds: torch, a model, its optimizer, the splits


def max_workers() -> int:
    """As many workers as this machine has cores, and memory for: each is a whole torch process."""
    cores = os.cpu_count() or 1
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf: cores decide
        return cores
    return max(1, min(cores, memory // WORKER_MEMORY_BYTES))


def check_workers(workers: int) -> None:
    limit = max_workers()
    if workers > limit:
        raise BoneAgeError(
            f"--workers {workers}: this machine has room for {limit} (one per core, about 2 GiB of memory each); "
            "for more, run the same command on other machines against one PostgreSQL --storage"
        )


def preflight(spec: StudySpec, n_train: int) -> None:
    """Catch a study that can only fail before any trial runs: every batch size the space can draw, and
    the seed recipe's, must fit the training set; the fixed backbone and weights, and the seed
    recipe's, must load."""
    from boneage_core.models import build_model
    from boneage_core.train import resolve_device

    resolve_device(spec.train.device)  # cuda asked for on a machine without one
    p = spec.space.get("batch_size")
    largest = max(p.choices) if p and p.type == "categorical" else int(p.high) if p else spec.train.batch_size
    if largest > n_train:
        raise BoneAgeError(f"batch_size {largest} is above the {n_train} training images; lower it or use more images")
    if spec.baseline.batch_size > n_train:
        raise BoneAgeError(
            f"baseline.batch_size = {spec.baseline.batch_size} is above the {n_train} training images; lower it "
            "in [baseline] or use more images"
        )
    build_model(spec.train)
    if (spec.baseline.backbone, spec.baseline.pretrained) != (spec.train.backbone, spec.train.pretrained):
        try:
            build_model(spec.baseline)
        except BoneAgeError as exc:
            raise BoneAgeError(f"the seed recipe ([baseline]) cannot be built: {exc}") from None


def _caused_by_storage(exc: BaseException) -> bool:
    """Whether a database error is anywhere in the chain. (When the database drops during a tell,
    Optuna's own clean-up then fails with an UnboundLocalError that only chains the real cause.)"""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, STORAGE_ERRORS):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


class SearchFailing(RuntimeError):
    """Trial after trial fails: stop instead of burning the budget."""


def _check_failures(study: optuna.Study, limit: int = 5) -> None:
    recent = study.get_trials(deepcopy=False)[-limit:]
    reasons = [t.user_attrs.get("fail_reason", "") for t in recent if t.state == TrialState.FAIL]
    if len(recent) == limit and len(reasons) == limit and not any("not run:" in r for r in reasons):
        raise SearchFailing(f"the last {limit} trials failed; the last one: {reasons[-1] or 'see the study'}")


def worker_devices(workers: int, visible: str | None, count: int) -> list[str | None]:
    """The CUDA_VISIBLE_DEVICES value for each of `workers` processes, the first being this one: the
    i-th of the devices this process may use, in its own notation (an index, a GPU UUID or a MIG id),
    round robin; None where there is nothing to choose (no GPU, or one). This process keeps its own
    first device (cuda:0 within its set), so it is listed but not changed."""
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible is not None else list(map(str, range(count)))
    ids = ids[:count]  # CUDA takes the first `count` ids it could use
    if len(ids) < 2:
        return [None] * workers
    return [ids[i % len(ids)] for i in range(workers)]


def device_shares(devices: list[str | None]) -> list[float]:
    """Each process's share of its GPU's memory: 1/n for the n processes that use the same device (all
    of them when there is one GPU or none to choose)."""
    if devices[0] is None:
        return [1 / len(devices)] * len(devices)
    return [1 / devices.count(d) for d in devices]


def _spawn_workers(k: int, argv: list[str]) -> list[subprocess.Popen]:
    """k extra worker processes running the same command; one GPU each when several are visible, and
    each told its share of its GPU's memory. This process is worker 0."""
    devices = worker_devices(k + 1, os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count())
    shares = device_shares(devices)
    os.environ[SHARE_ENV] = str(shares[0])
    if devices[0] is not None:
        mapping = ", ".join(f"worker {i}: {d}" for i, d in enumerate(devices))
        tqdm.write(f"GPUs (CUDA_VISIBLE_DEVICES): {mapping}", file=sys.stderr)
    procs = []
    for i in range(1, k + 1):
        env = dict(os.environ, **{WORKER_ENV: str(i), WORKERS_ENV: str(k + 1), SHARE_ENV: str(shares[i])})
        if devices[i] is not None:
            env["CUDA_VISIBLE_DEVICES"] = devices[i]
        procs.append(subprocess.Popen([sys.executable, "-m", "search", *argv, "--workers", "1", "--quiet"], env=env))
    return procs


def run_study(
    spec: StudySpec,
    url: str,
    n_trials: int,
    workers: int = 1,
    timeout_s: float | None = None,
    quiet: bool = False,
    worker_argv: list[str] | None = None,
    argv: list[str] | None = None,
) -> RunOutcome:
    """Search until the study holds n_trials finished trials. The first run creates the study with its
    settings; a later one with other settings stops before training (search.record). argv is the
    command as typed, recorded in the study (by the first process only, not by its workers)."""
    check_url(url)  # a bad or unwritable storage is refused before any data is read
    check_workers(workers)
    worker_index = int(os.environ.get(WORKER_ENV, "0"))
    # K workers on one machine share its cores instead of each starting a thread per core
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get(WORKERS_ENV, workers))))
    data = StudyData(spec, quiet)
    train_images = len(data.split(spec.train.image_size, "train"))
    preflight(spec, train_images)
    study = load_study(spec, url)
    check_settings(study, study_settings(spec, data.fingerprint()))
    if worker_index == 0:
        study.set_user_attr("storage", redact(url))
        study.set_user_attr("target_trials", n_trials)
        entry = provenance(argv or [], device_description(spec.train.device), data.fingerprint(), workers=workers)
        record_command(study, entry)
    # reseed the sampler past what the study holds, distinct per worker
    study.sampler = make_sampler(spec, offset=len(study.get_trials(deepcopy=False)) + 7919 * worker_index)
    extra = _spawn_workers(workers - 1, worker_argv or []) if workers > 1 and worker_index == 0 else []
    objective = make_objective(spec, data, n_trials, float(os.environ.get(SHARE_ENV, "1")))
    start = time.monotonic()
    c = counts(study)
    bar = tqdm(
        total=n_trials,
        initial=min(sum(c[state] for state in FINISHED), n_trials),
        desc=f"study {spec.name}",
        unit="trial",
        disable=quiet,
        dynamic_ncols=True,
    )
    timed_out = False

    def tell(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        reason = trial.user_attrs.get("fail_reason", "")
        if trial.state == TrialState.FAIL and not quiet and not reason.startswith("not run:"):
            tqdm.write(f"trial {trial.number} failed: {reason or 'see the study'}", file=sys.stderr)

    def step() -> str | None:
        """One pass of the loop: 'done', 'timeout', or None to go on."""
        c = counts(study)
        done = sum(c[state] for state in FINISHED)
        bar.n = min(done, n_trials)
        if c[TrialState.COMPLETE]:
            bar.set_postfix(best_mae=f"{study.best_value:.2f}", pruned=c[TrialState.PRUNED], refresh=False)
        bar.refresh()
        if done >= n_trials:
            return "done"
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            return "timeout"
        if done + c[TrialState.RUNNING] >= n_trials:
            # the rest is running elsewhere; wait in case a worker dies and its trial must be redone.
            # (WAITING trials, such as a dead worker's retried one, are what the next ask() runs.)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            time.sleep(spec.heartbeat_interval_s / 2)
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(objective, n_trials=1, catch=(*TRIAL_FAILURES, BudgetReached), callbacks=[tell])
        _check_failures(study)
        return None

    try:
        outage_since: float | None = None
        while True:
            try:
                outcome = step()
                outage_since = None
            except Exception as exc:
                if not _caused_by_storage(exc):
                    raise
                lasting = storage_fault(exc, url)
                if lasting:  # no retry can fix it; the study as committed so far is intact
                    raise SearchFailing(lasting) from None
                # a restarted database server: wait for it; the trial it interrupted is left RUNNING,
                # so the heartbeat fails it and it is run again
                if outage_since is None:
                    tqdm.write(f"lost the study storage ({type(exc).__name__}); reconnecting", file=sys.stderr)
                outage_since = outage_since or time.monotonic()
                if time.monotonic() - outage_since > STORAGE_OUTAGE_LIMIT_S:
                    raise SearchFailing(
                        f"lost the study storage for over {STORAGE_OUTAGE_LIMIT_S} s: "
                        f"{scrub(str(exc).splitlines()[0], url)[:200]}"
                    ) from None
                time.sleep(2)
                continue
            if outcome is not None:
                timed_out = outcome == "timeout"
                break
    except BaseException:
        for p in extra:  # Ctrl-C or a crash here: the workers end their trials too
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        raise
    finally:
        bar.close()
        for p in extra:
            try:
                p.wait()
            except KeyboardInterrupt:
                p.wait()
    c = counts(study)
    best = study.best_value if c[TrialState.COMPLETE] else None
    return RunOutcome(sum(c[state] for state in FINISHED), c[TrialState.PRUNED], c[TrialState.FAIL], best, timed_out)
