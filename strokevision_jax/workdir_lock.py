"""One process at a time per run directory: a lock file naming its holder.

`WorkdirLock(path).acquire()` creates <path>/lock atomically (O_CREAT | O_EXCL) with the pid, the
host and the start time. A second process finds it and stops with `WorkdirBusy`, naming the
holder; a lock whose process is gone (same host, no such pid) is stale and taken over. The lock
is removed on release (a `with` block releases it on any exit; a killed process leaves a stale
lock, which the next run takes over).
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import time

LOCK_FILE = "lock"


class WorkdirBusy(RuntimeError):
    """Another live process holds the run directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class WorkdirLock:
    def __init__(self, workdir: os.PathLike):
        self.path = pathlib.Path(workdir) / LOCK_FILE
        self.held = False

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError):
            return {}  # being written, or damaged: treated as held by an unknown process

    def acquire(self) -> "WorkdirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    continue  # released meanwhile
                stale = (holder.get("host") == me["host"] and isinstance(holder.get("pid"), int)
                         and not _alive(holder["pid"]))
                if not stale:
                    who = (f"process {holder.get('pid')} on {holder.get('host')} (since {holder.get('since')})"
                           if holder else "another process")
                    raise WorkdirBusy(
                        f"{self.path.parent} is in use by {who}. Wait for it to finish or stop it; if that "
                        f"process is gone (another machine), delete {self.path}.")
                self.path.unlink(missing_ok=True)  # its process is gone: take the lock over
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise WorkdirBusy(f"Could not take {self.path}: it keeps changing hands.")

    def release(self) -> None:
        if self.held:
            holder = self._holder()
            if holder and holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def live_holder(workdir: os.PathLike) -> dict | None:
    """The holder of `workdir`'s lock if it is (or may be, on another host) still running."""
    lock = WorkdirLock(workdir)
    holder = lock._holder()
    if holder is None:
        return None
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        return holder if _alive(holder["pid"]) else None
    return holder
