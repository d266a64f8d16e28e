"""The worker processes of `run --workers K`: how many this machine has room for, which GPU each gets,
and starting them. A worker is a process started by multiprocessing (spawn: a fresh interpreter, no
forked torch or database state) that calls a function of the library with its index; nothing is
re-parsed from a command line."""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

from boneage_core.errors import BoneAgeError

PR_SET_PDEATHSIG = 1  # linux/prctl.h
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


def usable_cores() -> list[int]:
    """The cores this process may run on (taskset, a container's cpuset, a benchmark's share), not the machine's."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def threads_per_worker(workers: int) -> int:
    """K workers on one machine share its cores instead of each starting a thread per core."""
    return max(1, len(usable_cores()) // workers)


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


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """os.environ with values set, then restored: a spawned process inherits the environment as it
    is when it starts, and CUDA reads CUDA_VISIBLE_DEVICES once, when the process first uses it."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start_workers(target: Callable[..., None], args: Callable[[int], tuple], devices: list[str | None]):
    """Processes 1..K-1 (this one is worker 0), each running target(*args(i)), worker i on devices[i]
    where there is a choice of GPUs; each ends when this process dies (end_with_parent)."""
    ctx = mp.get_context("spawn")
    procs = []
    for i in range(1, len(devices)):
        env = {"CUDA_VISIBLE_DEVICES": devices[i]} if devices[i] is not None else {}
        proc = ctx.Process(target=_as_worker, args=(os.getpid(), target, *args(i)), name=f"worker-{i}")
        with _environment(env):
            proc.start()
        procs.append(proc)
    return procs


def _as_worker(parent_pid: int, target: Callable[..., None], *args) -> None:
    end_with_parent(parent_pid)
    target(*args)


def end_with_parent(parent_pid: int, every_s: float = 1.0) -> None:
    """SIGTERM to this process when parent_pid, the process that started it, dies, even by kill -9:
    the worker then fails its trial and ends, as when its parent tells it, instead of training alone
    until the budget is spent. Linux sends it at once (PR_SET_PDEATHSIG); a thread that watches the
    parent id catches the rest (a parent already dead at start, other systems)."""
    with contextlib.suppress(Exception):  # not Linux, or no libc to ask
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(every_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
