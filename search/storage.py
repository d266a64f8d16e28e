"""Study storage: URL checks, password redaction, heartbeat and stale-trial retry, create or resume."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from boneage_core import BoneAgeError

HEARTBEAT_INTERVAL_S = 10
GRACE_PERIOD_S = 30  # a trial silent this long belongs to a dead worker: failed, then retried
_URL = re.compile(r"^(?P<scheme>[a-z][a-z0-9+]*)://(?P<rest>.*)$")


def redact(url: str) -> str:
    """The URL with any password replaced by ***; safe to print, log and store."""
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)


def default_storage_url(study_name: str, studies_dir: Path = Path("studies")) -> str:
    return f"sqlite:///{studies_dir / (study_name + '.db')}"


def check_url(url: str) -> str:
    m = _URL.match(url)
    if not m or m["scheme"].split("+")[0] not in ("sqlite", "postgresql", "mysql"):
        raise BoneAgeError(
            f"storage URL {redact(url)!r} is not valid: use sqlite:///path.db or postgresql://user@host/db"
        )
    if m["scheme"] == "sqlite":
        path = Path(m["rest"].removeprefix("/"))
        if str(path) not in ("", ":memory:"):
            parent = path.parent if path.parent != Path("") else Path(".")
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BoneAgeError(f"cannot create the study directory {parent} ({exc.strerror})") from None
            probe = path if path.exists() else parent
            import os

            if not os.access(probe, os.W_OK):
                raise BoneAgeError(f"study storage {path} is not writable: check permissions or pass --storage")
    return url


def open_storage(url: str, heartbeat: bool = True) -> RDBStorage:
    """RDBStorage with a heartbeat; stale RUNNING trials are failed and re-enqueued by the next worker."""
    check_url(url)
    engine_kwargs = {"pool_pre_ping": True} if not url.startswith("sqlite") else {"connect_args": {"timeout": 60}}
    try:
        with warnings.catch_warnings():
            # heartbeat and its retry callback are marked experimental; they are Optuna 5's documented way
            # to fail and retry the trials of dead workers
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            kwargs: dict[str, Any] = {}
            if heartbeat:
                kwargs = dict(
                    heartbeat_interval=HEARTBEAT_INTERVAL_S,
                    grace_period=GRACE_PERIOD_S,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
                )
            return RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
    except Exception as exc:  # sqlalchemy raises driver-specific types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BoneAgeError(f"cannot open study storage {redact(url)}: {redact(reason)[:200]}") from None


def check_space_matches(study: optuna.Study, signature: dict[str, Any], study_file: str) -> None:
    """Refuse to mix trials of two different search spaces in one study."""
    stored = study.user_attrs.get("space")
    if stored is None:
        study.set_user_attr("space", signature)
        return
    if json.loads(json.dumps(stored)) != json.loads(json.dumps(signature)):
        raise BoneAgeError(
            f"study '{study.study_name}' was created with another search space than {study_file} now defines; "
            "restore the TOML, or start a new study with --set study.name=<new name>"
        )
