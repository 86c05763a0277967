"""Worker processes for building, independent of the caller's script.

multiprocessing's "spawn" and "forkserver" start methods re-run the caller's main module in every
worker; a script that builds the dataset at its top level (no `if __name__ == "__main__":`
guard, as TFDS's own examples are written) or a script read from standard input then breaks the
pool (`BrokenProcessPool`). "fork" does not, but forking a process that already runs JAX's
threads can deadlock. These workers are plain subprocesses of `sys.executable` running `serve`
below: they import this project and nothing of
the caller's, and talk to the parent over two pipes (pickled tasks in, pickled results out; the
messages only ever travel between this process and its own children).

    with WorkerPool(4) as pool:
        for clip in pool.imap(synthetic.simulate_clip, [(config, spec) for spec in specs]):
            ...
"""

from __future__ import annotations

import importlib
import os
import pathlib
import pickle
import selectors
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any


class WorkerError(RuntimeError):
    """A task failed in a worker process (the message holds the worker's traceback)."""


def _function_path(function: Callable) -> str:
    name = f"{function.__module__}:{function.__qualname__}"
    if function.__module__ == "__main__" or "<" in function.__qualname__:
        raise ValueError(f"{name}: workers run importable module-level functions only")
    return name


def _resolve(path: str) -> Callable:
    module, _, qualname = path.partition(":")
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


_ENTRY = f"import sys; from {__name__} import serve; serve(int(sys.argv[1]), int(sys.argv[2]))"


class _Worker:
    def __init__(self, env: dict[str, str]):
        task_read, self._task_write = os.pipe()
        self._result_read, result_write = os.pipe()
        self.process = subprocess.Popen(
            [sys.executable, "-c", _ENTRY, str(task_read), str(result_write)],
            pass_fds=(task_read, result_write), env=env, stdin=subprocess.DEVNULL)
        os.close(task_read)
        os.close(result_write)
        self.tasks = os.fdopen(self._task_write, "wb")
        self.results = os.fdopen(self._result_read, "rb")

    def send(self, message) -> None:
        pickle.dump(message, self.tasks, protocol=pickle.HIGHEST_PROTOCOL)
        self.tasks.flush()

    def receive(self):
        try:
            return pickle.load(self.results)
        except EOFError:
            code = self.process.wait()
            raise WorkerError(f"a build worker (pid {self.process.pid}) exited with status {code} "
                              "before answering; see its messages above") from None

    def close(self) -> None:
        try:
            self.send(None)
            self.tasks.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.results.close()


class WorkerPool:
    """`workers` subprocesses running module-level functions of this project, in order."""

    def __init__(self, workers: int):
        if workers < 1:
            raise ValueError(f"workers={workers}: need at least one")
        env = dict(os.environ)
        # The workers find this project even when the caller put it on sys.path by hand.
        root = str(pathlib.Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        self._workers = [_Worker(env) for _ in range(workers)]

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for worker in self._workers:
            worker.close()
        self._workers = []

    def imap(self, function: Callable, arguments: Iterable[Sequence], chunksize: int = 4) -> Iterator:
        """function(*args) for each args of `arguments`, in order, computed in the workers."""
        path = _function_path(function)
        arguments = list(arguments)
        chunks = [arguments[i:i + chunksize] for i in range(0, len(arguments), chunksize)]
        selector = selectors.DefaultSelector()
        for worker in self._workers:
            selector.register(worker.results, selectors.EVENT_READ, worker)
        pending = iter(range(len(chunks)))
        in_flight: dict[_Worker, int] = {}

        def feed(worker: _Worker) -> None:
            index = next(pending, None)
            if index is not None:
                worker.send((index, path, chunks[index]))
                in_flight[worker] = index

        try:
            for worker in self._workers:
                feed(worker)
            done: dict[int, list] = {}
            for wanted in range(len(chunks)):
                while wanted not in done:
                    for key, _ in selector.select():
                        worker = key.data
                        index, status, payload = worker.receive()
                        del in_flight[worker]
                        if status != "ok":
                            raise WorkerError(f"{path} failed in a build worker:\n{payload}")
                        done[index] = payload
                        feed(worker)
                yield from done.pop(wanted)
        finally:
            selector.close()
            if in_flight:  # stopped early: the answers still on their way are not wanted
                self.close()


def serve(task_fd: int, result_fd: int) -> None:
    """The worker's loop: (index, function path, chunk of argument tuples) -> (index, status, results)."""
    with os.fdopen(task_fd, "rb") as tasks, os.fdopen(result_fd, "wb") as results:
        while True:
            try:
                message = pickle.load(tasks)
            except EOFError:
                return
            if message is None:
                return
            index, path, chunk = message
            try:
                function = _resolve(path)
                answer = (index, "ok", [function(*args) for args in chunk])
            except BaseException:  # noqa: BLE001 (sent to the parent, which raises it)
                answer = (index, "error", traceback.format_exc())
            pickle.dump(answer, results, protocol=pickle.HIGHEST_PROTOCOL)
            results.flush()
