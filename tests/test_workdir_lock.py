"""The run-directory lock: a second holder is refused with the first one named; stale locks are
taken over; a second `train` on a busy workdir stops at once."""

import json
import os
import subprocess
import sys

import pytest

from strokevision_jax import train
from strokevision_jax.workdir_lock import LOCK_FILE, WorkdirBusy, WorkdirLock


def test_a_second_holder_is_refused_and_the_first_named(tmp_path):
    with WorkdirLock(tmp_path):
        holder = json.loads((tmp_path / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(WorkdirBusy, match=rf"{tmp_path} is in use by process {os.getpid()} on"):
            WorkdirLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_FILE).exists()  # released
    WorkdirLock(tmp_path).acquire().release()


def test_a_stale_lock_is_taken_over(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    import socket

    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": int(gone.stdout), "host": socket.gethostname(),
                                                  "since": "earlier"}))
    lock = WorkdirLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_lock_from_another_machine_is_respected(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "earlier"}))
    with pytest.raises(WorkdirBusy, match=f"process 1 on elsewhere.*delete {tmp_path / LOCK_FILE}"):
        WorkdirLock(tmp_path).acquire()


def test_train_on_a_busy_workdir_stops_naming_the_other_process(tmp_path):
    with WorkdirLock(tmp_path / "run"):
        with pytest.raises(train.WorkdirInUse, match=f"in use by process {os.getpid()}"):
            train.train_and_evaluate(None, tmp_path / "run", tmp_path, log=None)


def test_live_holder(tmp_path):
    from strokevision_jax.workdir_lock import live_holder

    assert live_holder(tmp_path) is None
    with WorkdirLock(tmp_path):
        assert live_holder(tmp_path)["pid"] == os.getpid()
    assert live_holder(tmp_path) is None
