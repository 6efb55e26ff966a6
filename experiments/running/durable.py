"""What a sweep needs to survive long jobs: whole-file writes, checkpoints that resume or step aside,
one trainer per row (locks), and a graceful stop on Ctrl-C / SIGTERM.

- Every result and checkpoint is written to a temporary file and renamed over the target, so a kill or
  a full disk leaves the old file or the new one, never half of one.
- On resume, a checkpoint that does not load (or fails its zip checksums) is renamed aside with a
  one-line warning and the next newest one is used; with none left the row starts again from step 0.
- A row (and the pretraining work directory it trains) is held by a lock: an flock on a lock file that holds
  its owner's host, pid, start time and heartbeat. A second sweep skips the row. The kernel frees an flock
  when its process dies, so a killed sweep's rows are free at once; a lock from another host is taken over
  once its heartbeat (every minute) is older than the lease (10 min; `ABLATIONS_LOCK_LEASE=<seconds>`).
- The first SIGINT / SIGTERM asks the run to stop after the current step with a checkpoint; a second
  SIGINT stops at once.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

from experiments.running.progress import minutes

# -- whole-file writes -------------------------------------------------------------------------------

def write_atomically(path: Path, data: bytes, what: str = "file") -> None:
    """Write `data` to a temporary file beside `path`, flush it to disk, then rename it over `path`. `what` names
    the kind of file ("checkpoint", "row-file"): tests/test_crash_safety.py kills a sweep halfway through the
    n-th write of a kind by wrapping this function."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(temporary, "wb") as handle:
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


def _step_if_whole(path: Path) -> int | None:
    """The global step of a whole checkpoint (a readable zip whose members match their CRCs, and unpickles);
    None for a damaged one."""
    try:
        with zipfile.ZipFile(path) as archive:
            if archive.testzip() is not None:
                return None
        return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True)["global_step"])
    except Exception:  # a damaged file fails in many ways (zip, pickle, EOF, no step); each means "not loadable"
        return None


def resumable_checkpoint(directory: Path, log=print, set_aside: bool = True) -> Path | None:
    """The checkpoint in `directory` with the highest global step among those that load (last.ckpt first on a
    tie). last.ckpt is not always the newest: a kill while it was being rewritten leaves the previous one,
    beside a newer periodic checkpoint. With `set_aside` (one process of a multi-process run), each one that
    does not load is renamed aside (`<name>.damaged-<time>`, never deleted) with a one-line warning, and the
    leftovers of killed writes are removed."""
    if set_aside:
        for leftover in directory.glob("*.ckpt.tmp*"):  # a killed write (the row's lock keeps other writers out)
            leftover.unlink(missing_ok=True)
    candidates = sorted(directory.glob("*.ckpt"), key=lambda path: path.name != "last.ckpt")
    best: tuple[int, Path] | None = None
    for path in candidates:
        step = _step_if_whole(path)
        if step is not None:
            if best is None or step > best[0]:
                best = (step, path)
        elif set_aside and path.exists():
            aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(path, aside)
            log(f"warning: checkpoint {path} does not load (truncated or damaged); set aside as {aside.name}")
    if best is None and candidates and set_aside:
        log(f"warning: no loadable checkpoint left in {directory}; this run starts again from step 0")
    return best[1] if best else None


# -- one trainer per row -----------------------------------------------------------------------------
#
# A lock is a file with an flock on it and its owner's record inside (host, pid, start, last heartbeat).
# The kernel gives an flock to one open file at a time and takes it back when its process dies, however it
# dies: two sweeps never hold one row, and a killed sweep's rows are free at once, with no guessing from
# pids. A sweep on another host may hold the file with an flock that this host cannot see (a file server
# without coherent locks), so a record from another host is also trusted while its heartbeat is younger
# than the lease; a record older than that is a dead host's, and is taken over with a warning.

LEASE_SECONDS = 600.0  # the default lease; ABLATIONS_LOCK_LEASE=<seconds> or Lock(lease=...) changes it
HEARTBEAT_SECONDS = 60.0  # or a fifth of a shorter lease: one late beat never lets the lock go
RECORD_BYTES = 512  # the record, padded to this size, is rewritten in place by one write of the same size

_held: set[Lock] = set()  # this process's held locks
_warned_no_locks = False


def _forget_inherited_locks() -> None:
    """In a forked child (a DataLoader worker), close the child's copies of the parent's lock files: an open
    copy would keep the parent's flock alive after the parent is killed, until the child exits too."""
    for lock in list(_held):
        lock.held = False
        os.close(lock.descriptor)
    _held.clear()


os.register_at_fork(after_in_child=_forget_inherited_locks)


def _process_start(pid: int) -> str | None:
    """The start time of a process in clock ticks since boot (/proc), to tell a live pid from a reused one."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(owner: dict) -> bool:
    """Whether the process of a record from this host still runs (asked only where there is no flock)."""
    pid = int(owner.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return owner.get("pid_start") in (None, _process_start(pid))


def _parse(data: bytes) -> dict:
    """A lock file's record: {} when it is empty (created, not written yet). One that does not parse was read
    while its owner rewrote it (not atomic on every file system): an unknown host's, aged by the file's mtime."""
    if not data.strip():
        return {}
    try:
        return json.loads(data)
    except ValueError:
        return {"host": "?"}


def _same_file(descriptor: int, path: Path) -> bool:
    """Whether `path` still names the file open at `descriptor` (a holder removes it when it releases)."""
    try:
        return os.path.samestat(os.fstat(descriptor), os.stat(path))
    except FileNotFoundError:
        return False


def _warn_no_locks(path: Path, error: OSError, log) -> None:
    global _warned_no_locks
    if not _warned_no_locks:  # once per process, not once per row
        _warned_no_locks = True
        log(f"warning: the file system of {path.parent} has no file locks (flock: {error}), so the rows' lock "
            f"files alone keep sweeps apart, and two sweeps that reach a row at the same moment may both train it. "
            f"Run one sweep at a time on this results directory, or put --results-dir on a file system with locks "
            f"(a local disk; NFS with its lock service)")


class Lock:
    """One trainer per row: `acquire()` is True when this process now holds the lock, until `release()`."""

    def __init__(self, path: Path, lease: float | None = None, log=print):
        self.path, self.log, self.held = path, log, False
        self.lease = float(os.environ.get("ABLATIONS_LOCK_LEASE", LEASE_SECONDS)) if lease is None else lease
        self.heartbeat = min(HEARTBEAT_SECONDS, self.lease / 5)

    def owner(self) -> dict:
        try:
            return _parse(self.path.read_bytes())
        except OSError:
            return {}

    def acquire(self) -> bool:
        if self.held:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        opened = self._open()
        if opened is None:
            return False
        descriptor, locked = opened
        owner = _parse(os.pread(descriptor, 1 << 16, 0))
        here = owner.get("host") == socket.gethostname()
        age = time.time() - float(owner.get("heartbeat") or os.fstat(descriptor).st_mtime)
        if here:  # holding the flock, we know its process is gone (it would hold the flock); without, ask /proc
            in_use = not locked and _alive(owner)
        else:  # another host's flock may be invisible here: its heartbeat says whether it still runs
            in_use = bool(owner) and age < self.lease
        if in_use:
            os.close(descriptor)  # and with it our flock
            return False
        if owner and not here:
            self.log(f"warning: taking over {self.path} from {owner.get('host')} pid {owner.get('pid', '?')}: its "
                     f"last heartbeat was {minutes(age)} ago (lease {minutes(self.lease)}); its row resumes here")
        self.descriptor = descriptor
        self.record = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _process_start(os.getpid()),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(descriptor, 0)  # no tail of a longer record of the previous owner
        self._beat()
        self.held = True
        _held.add(self)
        self._stopping = threading.Event()
        self._heart = threading.Thread(target=self._keep_beating, name=f"heartbeat {self.path.name}", daemon=True)
        self._heart.start()
        return True

    def _open(self) -> tuple[int, bool] | None:
        """The lock file, open and flocked: (descriptor, True); (descriptor, False) on a file system without
        flock; None when a live process holds the flock."""
        while True:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # the kernel (or the file server) says a live process holds it
                os.close(descriptor)
                return None
            except OSError as error:  # ENOLCK, EOPNOTSUPP, ...: this file system has no flock
                _warn_no_locks(self.path, error, self.log)
                return descriptor, False
            if _same_file(descriptor, self.path):
                return descriptor, True
            os.close(descriptor)  # its holder released and removed it between our open and our flock: try anew

    def _beat(self) -> None:
        """Write the record with the time now as its heartbeat, in place (a new file would not carry the flock)
        and flushed (another host sees it only then)."""
        self.record["heartbeat"] = time.time()
        os.pwrite(self.descriptor, json.dumps(self.record).encode().ljust(RECORD_BYTES), 0)
        os.fsync(self.descriptor)

    def _mine(self) -> bool:
        """Whether the record is still ours: another host takes the lock over when our heartbeat stops for
        longer than the lease (this host suspended, or cut off from the file server)."""
        owner = _parse(os.pread(self.descriptor, 1 << 16, 0))
        return (owner.get("host"), owner.get("pid")) == (self.record["host"], self.record["pid"])

    def _keep_beating(self) -> None:
        """The heartbeat thread: a write of a few hundred bytes every `heartbeat` seconds, beside the training
        thread (the write and the fsync release the GIL). It stops at release, or when the lock was taken over."""
        while not self._stopping.wait(self.heartbeat):
            try:
                if not self._mine():
                    self.log(f"warning: {self.path} was taken over by {self.describe()} after this process was "
                             f"silent for longer than the lease; both may now train this row")
                    return
                self._beat()
            except OSError as error:  # a file server's hiccup: say so, and beat again next time
                self.log(f"warning: could not refresh the lock {self.path} ({error}); trying again in "
                         f"{minutes(self.heartbeat)}")

    def describe(self) -> str:
        """Who holds the lock, for the message of a sweep that skips the row."""
        owner = self.owner()
        text = f"{owner.get('host', '?')} pid {owner.get('pid', '?')} since {owner.get('started', '?')}"
        if "heartbeat" in owner:
            text += f", last heartbeat {minutes(time.time() - owner['heartbeat'])} ago"
        if owner.get("host") != socket.gethostname():
            text += f", taken over if silent for {minutes(self.lease)}"
        return f"{text}; lock file {self.path}"

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        _held.discard(self)
        self._stopping.set()
        self._heart.join()
        if self._mine():  # removed while still flocked: a sweep that opened it meanwhile sees it gone, and retries
            self.path.unlink(missing_ok=True)
        os.close(self.descriptor)  # and with it the flock


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
    first when `checkpoint` is given (pretraining; fine-tuning runs are short and simply run again).

    It leaves the fit by raising `Stopped`, not by `trainer.should_stop`: a fit told to stop ends its epoch and
    runs its end-of-training hooks, and ModelCheckpoint's (save_last) then rewrote this checkpoint with the loop
    state of a finished epoch. A run resumed from that started the next epoch's batches in the middle of this
    one: a smoke row stopped at the first step after a resume ended 0.016 nats off the uninterrupted run's
    held-out loss (tests/test_crash_safety.py)."""

    def __init__(self, checkpoint: Path | None = None):
        self.checkpoint = checkpoint

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if StopRequest.signum is None:
            return
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # mid-accumulation: stop at the optimizer step, which a checkpoint can resume from
        if self.checkpoint is not None:
            trainer.save_checkpoint(str(self.checkpoint))
        raise Stopped(StopRequest.signum)


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
