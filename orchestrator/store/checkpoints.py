"""A stage's epoch checkpoints on the store, Ray-free: which `checkpoint_*` folder of its Ray Train run
to resume from when the newest one is unreadable (a truncated upload, a node lost mid-write)."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Any

import pyarrow.fs as pafs

from orchestrator.store.format import CHECKPOINT_PREFIX, STATE_FILE

log = logging.getLogger(__name__)


def checkpoint_dirs(dirs: list[str], latest: str) -> list[str]:
    """The Train run's `checkpoint_*` folders not newer than `latest`, newest first (Ray names them
    `checkpoint_<timestamp>`, so name order is time order); `latest` is always the first."""

    def name(d: str) -> str:
        return d.rsplit("/", 1)[-1]

    latest = latest.rstrip("/")
    older = {
        d
        for d in (d.rstrip("/") for d in dirs)
        if name(d).startswith(CHECKPOINT_PREFIX) and name(d) < name(latest)
    }
    return [latest, *sorted(older, key=name, reverse=True)]


def first_loadable_state(
    dirs: list[str], load: Callable[[str], dict[str, Any]]
) -> tuple[str, dict[str, Any]] | None:
    """(folder, state) of the first folder in `dirs` whose state `load` can read, or None. Each folder
    that fails is logged as a warning naming its state file; the next one is tried."""
    for folder in dirs:
        try:
            state = load(folder)
        except Exception as exc:  # truncated / missing / not a state dict: try the previous checkpoint
            why = f"is unreadable ({type(exc).__name__}: {str(exc)[:200]})"
        else:
            if isinstance(state, dict):
                return folder, state
            why = f"holds {type(state).__name__}, not a state dict"
        log.warning("%s/%s %s; falling back to the previous checkpoint", folder, STATE_FILE, why)
    return None


def load_state(fs: pafs.FileSystem, folder: str) -> dict[str, Any]:
    """`<folder>/state.pt` through the checkpoint's filesystem (local or object store)."""
    import torch

    path = f"{folder}/{STATE_FILE}"
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{path} not found")
    with fs.open_input_stream(path) as f:
        data = f.read()
    state: dict[str, Any] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return state
