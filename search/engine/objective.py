"""One trial: draw a config, train it, report val MAE in months every epoch, prune hopeless ones."""

from __future__ import annotations

import gc
import threading
import time
import traceback
from collections.abc import Callable

import optuna
import torch

from boneage_core.dataset import SplitsBySize
from boneage_core.errors import BoneAgeError, TrainingDiverged
from boneage_core.train import fit
from search.config.space import suggest_config
from search.config.specs import StudySpec
from search.storage.trials import CONFIG_ATTR, epoch_recorder, record_outcome, set_trial_data

# Trial failures that say something about the parameters or the device, not about the program: the
# trial is recorded as failed with its reason and the search goes on (five in a row stop it). A CUDA
# error (an illegal access, a kernel launch failure: torch.AcceleratorError) in one worker fails that
# trial, not every worker of the run.
TRIAL_FAILURES = (TrainingDiverged, torch.OutOfMemoryError, torch.AcceleratorError, BoneAgeError)

# Set by a worker process's Ctrl-C/SIGTERM handler (search.engine.run.stop_on_signal). The handler also
# raises KeyboardInterrupt at once, but Python swallows an exception raised where a signal lands in a
# garbage-collector callback (gc.collect() runs after every trial); the trial loop and every epoch
# check this flag and raise it again there.
STOP = threading.Event()


def raise_if_stopped() -> None:
    if STOP.is_set():
        raise KeyboardInterrupt


def make_objective(spec: StudySpec, data: SplitsBySize, memory_share: float = 1.0) -> Callable[[optuna.Trial], float]:
    """The trial function: draw a config from the space, train it, return its last val MAE in months.
    memory_share: the part of its GPU's memory this process may plan for (1/K for K workers on it)."""

    def objective(trial: optuna.Trial) -> float:
        start = time.perf_counter()
        try:
            cfg = suggest_config(trial, spec.train, spec.space)
            set_trial_data(trial, CONFIG_ATTR, cfg.to_dict())
            # a searched image size is decoded on its first use, inside the trial that needs it
            train, val = data.split(cfg.image_size, "train"), data.split(cfg.image_size, "val")
            record = epoch_recorder(trial, start)

            def on_epoch_end(epoch: int, row: dict) -> None:
                raise_if_stopped()
                record(epoch, row)

            raise_if_stopped()
            result = fit(cfg, train, val, on_epoch_end, memory_share=memory_share)
            metrics, val_pred = result.metrics, result.pred_months
            del result  # the model with it, before collect() frees its memory
        except BaseException as exc:  # failed, pruned or interrupted
            if isinstance(exc, TRIAL_FAILURES):  # the reason is stored with the trial, printed by the run loop
                trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:500])
            release(exc)
            raise
        finally:
            collect()  # the model went with fit's result: only the metrics are kept
        record_outcome(trial, start, metrics, val_pred)
        return metrics["mae_months"]

    return objective


def release(exc: BaseException) -> None:
    """Drop what a trial's exception keeps alive. Optuna holds a failed or pruned trial's exception, and
    its traceback holds fit's frames: the model, the optimizer state, the device copies of the
    splits, for an out-of-memory error the activations too. Left there, one OOM trial makes the next
    ones OOM as well."""
    traceback.clear_frames(exc.__traceback__)


def collect() -> None:
    """Free a finished trial's memory before the next starts: cycles now, then the CUDA cache (which
    can only return blocks nothing references any more)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
