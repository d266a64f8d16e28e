"""optuna-dashboard on the study storage, bound to 127.0.0.1 unless --host says otherwise."""

from __future__ import annotations

import logging
import socket

from boneage_core import BoneAgeError
from search.storage import open_storage, redact

log = logging.getLogger(__name__)


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise BoneAgeError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None


def serve(url: str, host: str, port: int) -> None:
    from optuna_dashboard import run_server

    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("the dashboard listens on %s: anyone who can reach this address can read the study", host)
    check_port_free(host, port)
    storage = open_storage(url)
    print(f"optuna-dashboard for {redact(url)} at http://{host}:{port}/ (Ctrl-C stops it)", flush=True)
    try:
        run_server(storage, host=host, port=port)
    except KeyboardInterrupt:  # Ctrl-C is how a dashboard is meant to stop
        print("dashboard stopped")
