"""Row locks: of any number of sweeps racing over one lock, exactly one holds it; a killed holder's lock is free
at once on its machine; a lock from another host is taken over once its heartbeat is older than the lease, and
never while it beats. (A killed sweep's rows taken over end to end: tests/test_crash_safety.py.)

Racers and holders are forked, not spawned: they start in milliseconds, with the lock code already imported.
"""
import errno
import json
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest

from experiments.running import durable
from experiments.running.durable import Lock

RACERS, ROUNDS = 6, 400  # the former rename scheme had two holders in 23 to 28 of 400 rounds (2 busy cores)
FORK = multiprocessing.get_context("fork")


@pytest.fixture(autouse=True)
def default_lease(monkeypatch):
    monkeypatch.delenv("ABLATIONS_LOCK_LEASE", raising=False)


def exited_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def record(host: str, pid: int, heartbeat_age: float) -> str:
    return json.dumps({"host": host, "pid": pid, "started": "earlier", "heartbeat": time.time() - heartbeat_age})


# -- racing ----------------------------------------------------------------------------------------------


def _race(path, rounds, start, go, tried, released, answers):
    """One racer: each round, try the lock at the moment `go`, report, and keep what it got until all have tried."""
    jitter = random.Random(os.getpid())
    for round_ in range(rounds):
        start.wait()
        moment = go.value + jitter.uniform(0, 300e-6)  # within 0.3 ms of each other: real sweeps never start in step
        while time.monotonic() < moment:  # a spin, not the barrier: a barrier wakes its parties one by one
            pass
        lock = Lock(path)
        try:
            answers.put((round_, lock.acquire()))
        except Exception as error:  # reported, not raised: a racer that dies would leave the others at the barrier
            answers.put((round_, repr(error)))
        tried.wait()
        lock.release()
        released.wait()


@pytest.mark.parametrize("owner", ["stale", "live"])
def test_racing_sweeps_never_hold_one_lock_together(owner, tmp_path):
    """Six processes try one lock at the same moment, 400 times: over a stale lock (its owner's process is gone)
    exactly one of them gets it; over a live one (held by this process), none does."""
    path, dead = tmp_path / "row.lock", exited_pid()
    start, tried, released = (FORK.Barrier(RACERS + 1, timeout=60) for _ in range(3))
    answers, go = FORK.Queue(), FORK.Value("d", 0.0)
    racers = [FORK.Process(target=_race, args=(path, ROUNDS, start, go, tried, released, answers))
              for _ in range(RACERS)]
    for racer in racers:
        racer.start()
    holders, errors = [], []
    try:
        for round_ in range(ROUNDS):
            live = Lock(path)
            if owner == "stale":  # what a killed sweep leaves: its record, and no process behind it
                path.write_text(json.dumps({"host": socket.gethostname(), "pid": dead, "started": "earlier"}))
            else:
                assert live.acquire()
            go.value = time.monotonic() + 0.002
            start.wait()
            tried.wait()
            got = [answers.get(timeout=60) for _ in range(RACERS)]
            assert {r for r, _ in got} == {round_}
            errors += [(round_, held) for _, held in got if not isinstance(held, bool)]
            holders.append(sum(held is True for _, held in got) + live.held)
            released.wait()
            live.release()
            path.unlink(missing_ok=True)
            for leftover in tmp_path.glob("row.lock.*"):  # what the former takeover by renaming left
                leftover.unlink()
    except BaseException:
        for barrier in (start, tried, released):
            barrier.abort()  # the racers waiting for this process stop at once
        raise
    finally:
        for racer in racers:
            racer.join(timeout=60)
    crowded = [n for n, count in enumerate(holders) if count > 1]
    print(f"\n{owner} lock: {len(crowded)} of {len(holders)} rounds had more than one holder {crowded}")
    assert not crowded, f"{len(crowded)} of {len(holders)} rounds had more than one holder (rounds {crowded})"
    assert not errors, f"Lock.acquire raised: {errors}"
    assert holders == [1] * ROUNDS  # and never none: a stale lock is always taken over
    assert all(racer.exitcode == 0 for racer in racers)


def _churn(path, seconds, inside, most, taken):
    """Acquire, count the holders, release, again and again: what sweeps finishing and starting rows do."""
    lock, until = Lock(path), time.monotonic() + seconds
    while time.monotonic() < until:
        if lock.acquire():
            with inside.get_lock():
                inside.value += 1
                most.value = max(most.value, inside.value)
            time.sleep(0.0005)
            with inside.get_lock():
                inside.value -= 1
            taken.value += 1  # one process at a time is here, or `most` says otherwise
            lock.release()


def test_locks_released_and_taken_again_in_a_loop_never_have_two_holders(tmp_path):
    """A holder removes the lock file when it releases: a racer that opened that file just before must not hold
    it as well as the racer that creates the next one."""
    inside, most, taken = FORK.Value("i", 0), FORK.Value("i", 0), FORK.Value("i", 0, lock=False)
    racers = [FORK.Process(target=_churn, args=(tmp_path / "row.lock", 2.0, inside, most, taken))
              for _ in range(RACERS)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=60)
    assert all(racer.exitcode == 0 for racer in racers)
    print(f"\n{taken.value} acquisitions by {RACERS} processes in 2 s, at most {most.value} holder at a time")
    assert most.value == 1 and taken.value > 20
    assert not (tmp_path / "row.lock").exists()


# -- one machine -----------------------------------------------------------------------------------------


def _hold(path, ready, host=None, lease=None):
    """A sweep holding a row until it is killed; `host` pretends to be another machine."""
    if host:
        socket.gethostname = lambda: host
    lock = Lock(path, lease=lease)
    assert lock.acquire()
    ready.set()
    time.sleep(600)


def test_a_lock_is_exclusive_and_a_killed_holder_frees_it_at_once(tmp_path):
    path = tmp_path / "row.lock"
    mine, other = Lock(path), Lock(path)
    assert mine.acquire() and not other.acquire()
    assert json.loads(path.read_text())["pid"] == os.getpid()
    mine.release()
    assert not path.exists() and other.acquire()
    other.release()
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": exited_pid(), "started": "earlier"}))
    left = Lock(path)
    assert left.acquire()  # a lock file left by a process that has exited
    left.release()
    ready = FORK.Event()
    holder = FORK.Process(target=_hold, args=(path, ready))
    holder.start()
    assert ready.wait(30)
    held = Lock(path)
    assert not held.acquire() and f"pid {holder.pid}" in held.describe() and str(path) in held.describe()
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    assert held.acquire()  # at once: the kernel freed the holder's flock, no lease to wait for
    held.release()


def _hold_with_a_worker(path, ready, worker):
    """A sweep holding a row, with a forked child (as a DataLoader worker is) that outlives it."""
    lock = Lock(path)
    assert lock.acquire()
    pid = os.fork()
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    worker.value = pid
    ready.set()
    time.sleep(600)


def test_a_forked_child_does_not_keep_its_killed_parents_lock(tmp_path):
    """A DataLoader worker is a fork of its sweep, with a copy of each open file: once the sweep is killed, its
    lock must not live on in the worker (which notices its parent's death only seconds later)."""
    path, ready, worker = tmp_path / "row.lock", FORK.Event(), FORK.Value("i", 0)
    holder = FORK.Process(target=_hold_with_a_worker, args=(path, ready, worker))
    holder.start()
    assert ready.wait(30)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    assert worker.value > 0
    try:
        os.kill(worker.value, 0)  # the worker still runs
        lock = Lock(path)
        assert lock.acquire()
        lock.release()
    finally:
        os.kill(worker.value, signal.SIGKILL)


def test_without_file_locks_a_warning_says_what_to_do_and_the_records_still_keep_sweeps_apart(tmp_path, monkeypatch):
    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(durable.fcntl, "flock", no_locks)
    monkeypatch.setattr(durable, "_warned_no_locks", False)
    lines, path = [], tmp_path / "row.lock"
    first, second = Lock(path, log=lines.append), Lock(path, log=lines.append)
    assert first.acquire() and not second.acquire()  # its record names a live process of this host
    [warning] = lines  # once per process, not once per row
    assert warning.startswith(f"warning: the file system of {tmp_path} has no file locks (flock: [Errno")
    assert "may both train it" in warning and "Run one sweep at a time" in warning and "--results-dir" in warning
    first.release()
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": exited_pid(), "started": "earlier"}))
    assert second.acquire()  # a process that has exited
    second.release()
    path.write_text(record("another-machine", 7, heartbeat_age=5))
    assert not Lock(path).acquire()
    path.write_text(record("another-machine", 7, heartbeat_age=700))
    taker = Lock(path, log=lines.append)
    assert taker.acquire()
    assert len(lines) == 2 and "taking over" in lines[1]
    taker.release()


# -- several machines --------------------------------------------------------------------------------------


def test_a_lock_from_another_host_is_taken_over_after_the_lease_and_never_while_it_beats(tmp_path, monkeypatch):
    path, lines = tmp_path / "row.lock", []
    path.write_text(record("another-machine", 4242, heartbeat_age=5))
    held = Lock(path)
    assert not held.acquire()  # its heartbeat is 5 s old; the lease is 10 min
    assert "another-machine pid 4242" in held.describe() and "taken over if silent for 10.0 min" in held.describe()
    path.write_text(record("another-machine", 4242, heartbeat_age=700))
    taker = Lock(path, log=lines.append)
    assert taker.acquire()
    assert lines == [f"warning: taking over {path} from another-machine pid 4242: its last heartbeat was 11.7 min "
                     f"ago (lease 10.0 min); its row resumes here"]
    assert json.loads(path.read_text())["pid"] == os.getpid()
    taker.release()
    path.write_text(record("another-machine", 4242, heartbeat_age=5))
    monkeypatch.setenv("ABLATIONS_LOCK_LEASE", "2")  # a setting: a short lease for this test
    taker = Lock(path, log=lines.append)
    assert taker.acquire() and "(lease 2 s)" in lines[-1]
    taker.release()


def test_a_beating_lock_from_another_host_is_never_taken_over_and_a_silent_one_is(tmp_path, monkeypatch):
    """A holder 'on another machine' (a forked process with another host name) beats every 0.2 s with a 1 s
    lease. Its flock is made invisible here, as on a file server without coherent locks: for 3 s (3 leases) it
    is not taken over; once it is killed, its lock is, one lease after its last heartbeat."""
    path, ready, lines = tmp_path / "row.lock", FORK.Event(), []
    holder = FORK.Process(target=_hold, args=(path, ready, "another-machine", 1.0))
    holder.start()
    assert ready.wait(30)
    monkeypatch.setattr(durable.fcntl, "flock", lambda descriptor, operation: None)
    taker = Lock(path, lease=1.0, log=lines.append)
    beats = set()
    for _ in range(30):
        assert not taker.acquire(), lines
        beats.add(json.loads(path.read_text())["heartbeat"])
        time.sleep(0.1)
    assert len(beats) >= 10  # it beat every 0.2 s
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    killed = time.time()
    while not taker.acquire():
        time.sleep(0.05)
    waited = time.time() - killed
    assert 0.6 < waited < 2.0, waited  # one lease (1 s) after its last beat, which was at most 0.2 s before the kill
    [warning] = lines
    assert f"from another-machine pid {holder.pid}: its last heartbeat was 1 s ago (lease 1 s)" in warning
    taker.release()
