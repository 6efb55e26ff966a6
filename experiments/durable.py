"""What a sweep needs to survive long jobs: whole-file writes, checkpoints that resume or step aside,
one trainer per row (locks), and a graceful stop on Ctrl-C / SIGTERM.

- Every result and checkpoint is written to a temporary file and renamed over the target, so a kill or
  a full disk leaves the old file or the new one, never half of one.
- On resume, a checkpoint that does not load (or fails its zip checksums) is renamed aside with a
  one-line warning and the next newest one is used; with none left the row starts again from step 0.
- A row (and the pretraining work directory it trains) is held by an O_EXCL lock file naming host, pid
  and start time; a second sweep skips it, and a lock whose process is gone is taken over.
- The first SIGINT / SIGTERM asks the run to stop after the current step with a checkpoint; a second
  SIGINT stops at once.

`ABLATIONS_CRASH_AT=<what>:<n>` (the crash-safety tests only) kills the process with SIGKILL halfway
through the n-th write of <what> ("checkpoint" or "row-file"), to prove such a kill loses nothing.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import time
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

# -- whole-file writes -------------------------------------------------------------------------------

_writes: dict[str, int] = {}


def _crash_halfway(what: str) -> bool:
    """True when this write of `what` is the one the crash-safety test asked to die in."""
    target = os.environ.get("ABLATIONS_CRASH_AT", "")
    if not target.startswith(what + ":"):
        return False
    _writes[what] = _writes.get(what, 0) + 1
    return _writes[what] == int(target.split(":")[1])


def write_atomically(path: Path, data: bytes, what: str = "file") -> None:
    """Write `data` to a temporary file beside `path`, flush it to disk, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(temporary, "wb") as handle:
        if _crash_halfway(what):
            handle.write(data[: len(data) // 2])
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)  # readers see the old file or the new one


def write_json_atomically(path: Path, payload: dict, what: str = "row-file") -> None:
    write_atomically(path, json.dumps(payload, indent=2, default=str).encode(), what)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but through a temporary file and a rename."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        import io

        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomically(Path(path), buffer.getvalue(), "checkpoint")


# -- resume ------------------------------------------------------------------------------------------


def _loads(path: Path) -> bool:
    """Whether a checkpoint is whole: a readable zip whose members match their CRCs, and unpickles."""
    try:
        with zipfile.ZipFile(path) as archive:
            if archive.testzip() is not None:
                return False
        torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        return True
    except Exception:  # a damaged file fails in many ways (zip, pickle, EOF); each means "not loadable"
        return False


def _step_of(path: Path) -> int:
    """The global step in Lightning's checkpoint names (`epoch=0-step=250.ckpt`); last.ckpt ranks first."""
    if path.name == "last.ckpt":
        return 1 << 62
    for part in path.stem.split("-"):
        if part.startswith("step=") and part[5:].isdigit():
            return int(part[5:])
    return -1


def resumable_checkpoint(directory: Path, log=print, set_aside: bool = True) -> Path | None:
    """The newest checkpoint in `directory` that loads. With `set_aside` (one process of a multi-process
    run), each one that does not is renamed aside (`<name>.damaged-<time>`, never deleted) with a one-line
    warning, and the leftovers of killed writes are removed."""
    if set_aside:
        for leftover in directory.glob("*.ckpt.tmp*"):  # a killed write (the row's lock keeps other writers out)
            leftover.unlink(missing_ok=True)
    candidates = sorted(directory.glob("*.ckpt"), key=_step_of, reverse=True)
    for path in candidates:
        if _loads(path):
            return path
        if set_aside and path.exists():
            aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(path, aside)
            log(f"warning: checkpoint {path} does not load (truncated or damaged); set aside as {aside.name}")
    if candidates and set_aside:
        log(f"warning: no loadable checkpoint left in {directory}; this run starts again from step 0")
    return None


# -- one trainer per row -----------------------------------------------------------------------------


def _process_start(pid: int) -> str | None:
    """The start time of a process in clock ticks since boot (/proc), to tell a live pid from a reused one."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(owner: dict) -> bool:
    """Whether the process that wrote a lock still runs. A lock from another host is trusted as alive:
    this machine cannot see that host's processes (the skip message says how to clear it)."""
    if owner.get("host") != socket.gethostname():
        return True
    pid = int(owner.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return owner.get("pid_start") in (None, _process_start(pid))


class Lock:
    """An O_EXCL lock file: `acquire()` is True when this process now holds it."""

    def __init__(self, path: Path):
        self.path = path
        self.held = False

    def owner(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):  # a second try after taking over a stale lock
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.owner()
                age = time.time() - self.path.stat().st_mtime if self.path.exists() else 0.0
                being_written = not owner and age < 10  # an empty lock seconds old: its owner is still writing it
                if being_written or (owner and _alive(owner)):
                    return False
                try:  # rename, not delete: of two sweeps taking over at once, only one rename succeeds
                    os.replace(self.path, self.path.with_name(f"{self.path.name}.stale{os.getpid()}"))
                    os.remove(self.path.with_name(f"{self.path.name}.stale{os.getpid()}"))
                except FileNotFoundError:
                    pass
                continue
            me = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _process_start(os.getpid()),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
            with os.fdopen(descriptor, "w") as handle:
                json.dump(me, handle)
            self.held = True
            return True
        return False

    def describe(self) -> str:
        owner = self.owner()
        return (f"{owner.get('host', '?')} pid {owner.get('pid', '?')} since {owner.get('started', '?')} "
                f"(if that process is gone, delete {self.path})")

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass


# -- graceful stop -----------------------------------------------------------------------------------


class Stopped(Exception):
    """The user (Ctrl-C) or the cluster (SIGTERM) asked the run to stop; a checkpoint was saved."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StopRequest:
    """Turns the first SIGINT / SIGTERM into a request to stop after the current step; a second SIGINT
    raises KeyboardInterrupt as usual (stop at once, losing the work since the last checkpoint)."""

    signum: int | None = None

    @classmethod
    def install(cls) -> None:
        cls.signum = None
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, cls._handle)

    @classmethod
    def _handle(cls, signum, frame) -> None:
        if cls.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if cls.signum is None:
            print(f"\n{signal.Signals(signum).name}: stopping after this step with a checkpoint "
                  f"(Ctrl-C again stops at once)", flush=True)
        cls.signum = signum

    @classmethod
    def check(cls) -> None:
        """Between phases of a row: raise Stopped if a stop was asked for."""
        if cls.signum is not None:
            raise Stopped(cls.signum)


class StopOnRequest(Callback):
    """Ends a fit after the current optimizer step when a stop was asked for, saving a checkpoint there
    first when `checkpoint` is given (pretraining; fine-tuning runs are short and simply run again)."""

    def __init__(self, checkpoint: Path | None = None):
        self.checkpoint = checkpoint

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if StopRequest.signum is None or trainer.should_stop:
            return
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # mid-accumulation: stop at the optimizer step, which a checkpoint can resume from
        if self.checkpoint is not None:
            trainer.save_checkpoint(str(self.checkpoint))
        trainer.should_stop = True


class SaveFinalStep(Callback):
    """Checkpoints the last step when the periodic checkpoints miss it, so that a kill after pretraining
    (during fine-tuning) never trains again. Every rank calls it at the same step (saving is collective)."""

    def __init__(self, path: Path, every: int):
        self.path, self.every = path, every

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == trainer.max_steps and trainer.global_step % self.every:
            trainer.save_checkpoint(str(self.path))


class SeedEachBatch(Callback):
    """Seeds the random draws of each training batch (dropout, the generator's samples) from (seed, rank,
    epoch, batch): a run resumed from a checkpoint draws exactly what an uninterrupted run draws, whatever
    consumed random numbers in between (validation, data loader start-up, the restart itself)."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        import numpy as np

        state = np.random.SeedSequence([self.seed, trainer.global_rank, trainer.current_epoch, batch_idx])
        torch.manual_seed(int(state.generate_state(1, np.uint64)[0] >> 1))
