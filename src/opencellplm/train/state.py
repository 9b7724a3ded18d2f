"""The resumable training state: written atomically, read without unpickling objects; the run folder's lock."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import IO, Any

import torch

logger = logging.getLogger(__name__)

STATE_FILE = "state.pt"
FORMAT = "opencellplm-train-state"
LOCK_FILE = ".lock"


class RunInUseError(FileExistsError):
    """Another run holds the lock on a run folder."""


def lock_run_dir(directory: Path) -> IO[str] | None:
    """Lock ``directory`` (created if need be) for this process; the lock lasts while the returned file is open.

    An exclusive, non-blocking ``flock`` on ``directory/.lock``: a second run fails at once with
    :class:`RunInUseError`, and the kernel releases the lock when the file is closed or the process
    dies, so a killed run can be resumed at once. The file is never deleted (two runs could then hold
    locks on two files of the same name). Nothing is locked where there is no ``fcntl`` (Windows).
    """
    try:
        import fcntl
    except ImportError:
        logger.warning("no file locks on this platform: nothing stops two runs from writing to %s at once", directory)
        return None
    directory.mkdir(parents=True, exist_ok=True)
    handle = open(directory / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        raise RunInUseError(
            f"{directory} is in use by another run{f' (process {holder})' if holder else ''}; "
            "wait for it to end or pass another --out"
        ) from None
    except BaseException:
        handle.close()
        raise
    handle.truncate(0)  # who holds the lock, for the message above
    handle.write(f"{os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle


def save_state(directory: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``directory/state.pt`` atomically: a crash leaves the previous file intact."""
    target = directory / STATE_FILE
    partial = directory / f".{STATE_FILE}.partial"
    torch.save({"format": FORMAT} | state, partial)
    with open(partial, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, target)
    return target


def load_state(directory: Path) -> dict[str, Any]:
    """Read ``directory/state.pt`` (tensors and plain containers only)."""
    path = directory / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no training state to resume from: {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not an opencellplm training state")
    return state


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
