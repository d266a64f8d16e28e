"""Run a study until it holds N finished trials: resume, workers, heartbeat retry, Ctrl-C, timeout.

The trial budget is kept by a check before each ask: a process asks for a new trial only while the
finished and running trials together are fewer than N. No trial is recorded unless it trains. Two
workers that check at the same moment may both ask, so a run with K workers can end with up to K-1
trials over N (never fewer).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass

import optuna
import torch
from optuna.trial import TrialState
from tqdm import tqdm

from boneage_core.dataset import SplitsBySize
from boneage_core.device import resolve_device
from boneage_core.errors import BoneAgeError
from boneage_core.models import build_model
from search.config.specs import StudySpec
from search.engine.objective import STOP, TRIAL_FAILURES, make_objective, raise_if_stopped
from search.engine.workers import check_workers, device_shares, start_workers, threads_per_worker, worker_devices
from search.storage.provenance import device_description, provenance, record_command
from search.storage.settings import check_settings, study_settings
from search.storage.study import (
    caused_by_storage,
    check_url,
    make_sampler,
    open_study,
    quiet_optuna_warnings,
    redact,
    scrub,
    storage_fault,
)
from search.storage.trials import record_skipped

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
STORAGE_OUTAGE_LIMIT_S = 180
FAILURES_IN_A_ROW = 5


@dataclass
class RunOutcome:
    finished: int
    pruned: int
    failed: int
    best_value: float | None
    timed_out: bool


class SearchFailing(RuntimeError):
    """Trial after trial fails, or the storage is gone for good: stop instead of burning the budget."""


def counts(study: optuna.Study) -> dict[TrialState, int]:
    out = dict.fromkeys(TrialState, 0)
    for t in study.get_trials(deepcopy=False):
        out[t.state] += 1
    return out


def next_step(c: dict[TrialState, int], n_trials: int, timed_out: bool) -> str:
    """What the loop does next: 'done', 'timeout', 'wait' (the rest of the budget is running
    elsewhere; a dead worker's trial may have to be redone) or 'ask' (a WAITING trial, such as a
    dead worker's retried one, or a new one)."""
    finished = sum(c[s] for s in FINISHED)
    if finished >= n_trials:
        return "done"
    if timed_out:
        return "timeout"
    if finished + c[TrialState.RUNNING] >= n_trials:
        return "wait"
    return "ask"


def _choices(spec: StudySpec, name: str) -> list:
    p = spec.space.get(name)
    return list(p.choices) if p is not None and p.type == "categorical" else [getattr(spec.train, name)]


def _check_drawable_models(spec: StudySpec) -> None:
    """Each device, and each backbone with each weights, the space can draw (a categorical choice) or
    the study fixes: one that cannot be had here (cuda without a GPU, ImageNet weights offline, a timm
    name that does not exist) is one line now, not a failed trial whenever it is drawn."""
    for device in _choices(spec, "device"):
        with _drawn(spec, device=device):
            resolve_device(device)
    for backbone in _choices(spec, "backbone"):
        for weights in _choices(spec, "pretrained"):
            with _drawn(spec, backbone=backbone, pretrained=weights):
                build_model(dataclasses.replace(spec.train, backbone=backbone, pretrained=weights))


@contextlib.contextmanager
def _drawn(spec: StudySpec, **values):
    """A BoneAgeError inside, prefixed with the space's choices that led to it (a fixed value's own
    error names it already)."""
    try:
        yield
    except BoneAgeError as exc:
        drawn = [f"[space.{k}] can draw {v!r}" for k, v in values.items() if k in spec.space]
        if not drawn:
            raise
        raise BoneAgeError(f"{' with '.join(drawn)}, which cannot run here: {exc}") from None


def preflight(spec: StudySpec, n_train: int) -> None:
    """Catch a study that can only fail before any trial runs: every batch size the space can draw, and
    the baseline's, must fit the training set; every device, backbone and weights it can draw (or the
    fixed ones), and the baseline's, must be there."""
    p = spec.space.get("batch_size")
    largest = max(p.choices) if p and p.type == "categorical" else int(p.high) if p else spec.train.batch_size
    if largest > n_train:
        raise BoneAgeError(f"batch_size {largest} is above the {n_train} training images; lower it or use more images")
    if spec.baseline.batch_size > n_train:
        raise BoneAgeError(
            f"baseline.batch_size = {spec.baseline.batch_size} is above the {n_train} training images; lower it "
            "in [baseline] or use more images"
        )
    _check_drawable_models(spec)
    if (spec.baseline.backbone, spec.baseline.pretrained) != (spec.train.backbone, spec.train.pretrained):
        try:
            build_model(spec.baseline)
        except BoneAgeError as exc:
            raise BoneAgeError(f"the baseline ([baseline]) cannot be built: {exc}") from None


def _check_failures(study: optuna.Study) -> None:
    recent = study.get_trials(deepcopy=False)[-FAILURES_IN_A_ROW:]
    if len(recent) == FAILURES_IN_A_ROW and all(t.state == TrialState.FAIL for t in recent):
        reason = recent[-1].user_attrs.get("fail_reason") or "see the study"
        raise SearchFailing(f"the last {FAILURES_IN_A_ROW} trials failed; the last one: {reason}")


def _print_failure(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """optimize's callback: a failed trial's reason in one line (Optuna's own log, a traceback, is off)."""
    if trial.state == TrialState.FAIL:
        tqdm.write(f"trial {trial.number} failed: {trial.user_attrs.get('fail_reason') or 'see the study'}", sys.stderr)


class _Outage:
    """A database server that went away: waited for, up to STORAGE_OUTAGE_LIMIT_S, said once. The trial
    it interrupted is left RUNNING, so the heartbeat fails it and it is run again."""

    def __init__(self, url: str):
        self.url, self.since = url, None

    def handle(self, exc: Exception) -> None:
        """Return to retry, or raise: exc itself when it is no storage error, SearchFailing when no
        retry can fix it (a full disk, a corrupted file) or the outage lasts too long."""
        if not caused_by_storage(exc):
            raise exc
        lasting = storage_fault(exc, self.url)
        if lasting:  # the study as committed so far is intact
            raise SearchFailing(lasting) from None
        if self.since is None:
            tqdm.write(f"lost the study storage ({type(exc).__name__}); reconnecting", file=sys.stderr)
            self.since = time.monotonic()
        if time.monotonic() - self.since > STORAGE_OUTAGE_LIMIT_S:
            reason = scrub(str(exc).splitlines()[0], self.url)[:200]
            raise SearchFailing(f"lost the study storage for over {STORAGE_OUTAGE_LIMIT_S} s: {reason}") from None
        time.sleep(2)


def search_loop(
    study: optuna.Study,
    objective,
    *,
    spec: StudySpec,
    url: str,
    n_trials: int,
    timeout_s: float | None,
    bar: tqdm | None,
    quiet: bool,
) -> bool:
    """Trials one at a time until the study holds n_trials finished ones; True when --timeout stopped it.
    objective: make_objective's; bar: the first process's progress bar (None in workers and with quiet)."""
    start, outage = time.monotonic(), _Outage(url)
    callbacks = [] if quiet else [_print_failure]
    while True:
        raise_if_stopped()  # a worker's stop signal that Python swallowed
        try:
            c = counts(study)
            outage.since = None  # the storage answers
            _show(bar, study, c, n_trials)
            step = next_step(c, n_trials, timeout_s is not None and time.monotonic() - start > timeout_s)
            if step in ("done", "timeout"):
                return step == "timeout"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                if step == "wait":
                    optuna.storages.fail_stale_trials(study)
                    time.sleep(spec.heartbeat_interval_s / 2)
                    continue
                study.optimize(objective, n_trials=1, catch=TRIAL_FAILURES, callbacks=callbacks)
            _check_failures(study)
        except Exception as exc:
            outage.handle(exc)


def _show(bar, study: optuna.Study, c: dict[TrialState, int], n_trials: int) -> None:
    if bar is None:
        return
    bar.n = min(sum(c[s] for s in FINISHED), n_trials)
    if c[TrialState.COMPLETE]:
        bar.set_postfix(best_mae=f"{study.best_value:.2f}", pruned=c[TrialState.PRUNED], refresh=False)
    bar.refresh()


def _open_for_search(spec: StudySpec, url: str, quiet: bool, index: int) -> tuple[optuna.Study, SplitsBySize]:
    """The study and its data for worker `index`. The first process checks the study can train before
    it creates it, and checks (or, on a new study, stores) its settings; the workers it starts run on
    the same spec. The sampler is reseeded past what the study holds, distinct per worker."""
    data = SplitsBySize(spec.data, quiet, warn=index == 0)
    if index == 0:
        preflight(spec, len(data.split(spec.train.image_size, "train")))
    study = open_study(spec, url)
    if index == 0:
        check_settings(study, study_settings(spec, data.fingerprint()))
    study.sampler = make_sampler(spec.sampler, offset=len(study.get_trials(deepcopy=False)) + 7919 * index)
    return study, data


def stop_on_signal(signum, frame):
    """Ctrl-C or SIGTERM in a worker process: the trial in progress is failed (Optuna records that on the
    KeyboardInterrupt). A second signal, from the terminal and the first process at once, must not cut
    that record short, so only the first raises; should Python swallow that one (it landed in a garbage
    collector callback), STOP makes the next epoch or trial raise it."""
    if STOP.is_set():
        return
    STOP.set()
    raise KeyboardInterrupt


def _unraisable(info) -> None:
    """A stop signal Python swallowed is raised again by STOP: its 'Exception ignored' traceback is noise."""
    if not (isinstance(info.exc_value, KeyboardInterrupt) and STOP.is_set()):
        sys.__unraisablehook__(info)


def stop_on_signals() -> None:
    """In a worker process: Ctrl-C and SIGTERM fail the trial in progress and end the search (stop_on_signal)."""
    signal.signal(signal.SIGINT, stop_on_signal)
    signal.signal(signal.SIGTERM, stop_on_signal)
    sys.unraisablehook = _unraisable


def run_worker(spec: StudySpec, url: str, n_trials: int, index: int, workers: int, share: float, timeout_s) -> None:
    """Worker `index` (1..K-1) of `run --workers K`, in its own process: the same loop, quiet. Ctrl-C and
    SIGTERM fail its trial and end it, as in the first process; user errors are one line."""
    stop_on_signals()
    quiet_optuna_warnings()
    torch.set_num_threads(threads_per_worker(workers))
    try:
        study, data = _open_for_search(spec, url, quiet=True, index=index)
        objective = make_objective(spec, data, share)
        search_loop(study, objective, spec=spec, url=url, n_trials=n_trials, timeout_s=timeout_s, bar=None, quiet=True)
    except KeyboardInterrupt:
        sys.exit(130)
    except (BoneAgeError, SearchFailing) as exc:
        print(f"error (worker {index}): {exc}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, BoneAgeError) else 1)


def run_study(
    spec: StudySpec,
    url: str,
    n_trials: int,
    workers: int = 1,
    timeout_s: float | None = None,
    quiet: bool = False,
    argv: list[str] | None = None,
) -> RunOutcome:
    """Search until the study holds n_trials finished trials, with `workers` processes on this machine
    (this one and K-1 started here). The first run creates the study with its settings; a later one
    with other settings stops before training (search.storage.settings). argv is the command as typed, recorded
    in the study."""
    check_url(url)  # a bad or unwritable storage is refused before any data is read
    check_workers(workers)
    devices = worker_devices(workers, os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count())
    shares = device_shares(devices)
    torch.set_num_threads(threads_per_worker(workers))
    study, data = _open_for_search(spec, url, quiet, index=0)
    study.set_user_attr("storage", redact(url))
    study.set_user_attr("target_trials", n_trials)
    record_skipped(study, data.skipped())
    record_command(
        study, provenance(argv or [], device_description(spec.train.device), data.fingerprint(), workers=workers)
    )
    if devices[0] is not None:
        mapping = ", ".join(f"worker {i}: {d}" for i, d in enumerate(devices))
        tqdm.write(f"GPUs (CUDA_VISIBLE_DEVICES): {mapping}", file=sys.stderr)

    def worker_args(i: int) -> tuple:
        return spec, url, n_trials, i, workers, shares[i], timeout_s

    extra = start_workers(run_worker, worker_args, devices) if workers > 1 else []
    done = min(sum(counts(study)[s] for s in FINISHED), n_trials)
    bar = (
        None
        if quiet
        else tqdm(total=n_trials, initial=done, desc=f"study {spec.name}", unit="trial", dynamic_ncols=True)
    )
    try:
        objective = make_objective(spec, data, shares[0])
        timed_out = search_loop(
            study, objective, spec=spec, url=url, n_trials=n_trials, timeout_s=timeout_s, bar=bar, quiet=quiet
        )
    except BaseException:
        for p in extra:  # Ctrl-C, SIGTERM or a crash here: the workers end their trials too
            if p.is_alive():
                os.kill(p.pid, signal.SIGINT)
        raise
    finally:
        if bar is not None:
            bar.close()
        _join(extra)
    c = counts(study)
    best = study.best_value if c[TrialState.COMPLETE] else None
    return RunOutcome(sum(c[s] for s in FINISHED), c[TrialState.PRUNED], c[TrialState.FAIL], best, timed_out)


def _join(procs) -> None:
    """Wait for every worker (a second Ctrl-C while waiting is waited through), then say which ended
    abnormally."""
    for p in procs:
        while True:
            try:
                p.join()
                break
            except KeyboardInterrupt:
                continue
        if p.exitcode not in (0, 130):
            print(f"{p.name} ended with exit code {p.exitcode}", file=sys.stderr)
