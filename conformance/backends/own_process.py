"""Backends whose framework needs a process of its own: Keras 3 fixes its engine when it is first imported, so
Keras on JAX and Keras on PyTorch cannot share a process with Keras on TensorFlow.

The backend the suite loads is a proxy (`OwnProcess` before the adapter's class): it starts a child process with
the adapter's environment (`KERAS_BACKEND=jax`), sends each call that needs the framework there as a pickle over
a pipe, and returns what the adapter there returned. Everything else the suite reads (name, variants, conventions,
optimizer declarations, reproducers) is the adapter class' own and is answered in this process. The child is the
suite's own code started by this module, so its pickles are trusted; a case file's content reaches it only as a
parsed `Case`.

The child plants the fault `conformance mutate` names when the fault is its backend's (faults.plant_in_process).
A child that dies (a crash inside the framework) is an error of the call that was running, and the next call
starts a fresh one.
"""

from __future__ import annotations

import builtins
import importlib
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

from conformance.backends.base import Backend, NotApplicable

FORWARDED = ("versions", "gradients", "differentiate_once", "updates", "accumulation")
_HEADER = struct.Struct("<Q")


class ProcessEnded(RuntimeError):
    """The backend's process ended during a call; the message gives the last line it wrote."""


def _send(stream: BinaryIO, message: Any) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(payload)) + payload)
    stream.flush()


def _receive(stream: BinaryIO) -> Any:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError("the other end closed the pipe")
    (size,) = _HEADER.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        raise EOFError("the other end closed the pipe mid-message")
    return pickle.loads(payload)  # noqa: S301 - both ends are this module, started by the suite itself


class OwnProcess(Backend):
    """Mixed in before an adapter class: its FORWARDED methods run in a child process of the adapter's own, with
    `process_environment` set there before anything is imported."""

    process_environment: dict[str, str] = {}

    def __init__(self, extra_environment: dict[str, str] | None = None) -> None:
        """`extra_environment`: more for the child, e.g. the fault a self-test plants there."""
        super().__init__()
        self._extra_environment = dict(extra_environment or {})
        self._process: subprocess.Popen | None = None
        self._log = None

    def __init_subclass__(cls, **kwargs) -> None:
        """Forwards each FORWARDED method the adapter implements; one it leaves to `Backend` stays `Backend`'s
        here too, so that what the suite reads from a missing method (accumulation items not applicable) holds."""
        super().__init_subclass__(**kwargs)
        adapter = cls._adapter_class()
        for method in FORWARDED:
            if getattr(adapter, method) is not getattr(Backend, method):
                setattr(cls, method, _forwarding(method))

    @classmethod
    def _adapter_class(cls) -> type:
        """The adapter class itself: the first base after this mixin, which the child instantiates."""
        return next(base for base in cls.__mro__ if issubclass(base, Backend) and not issubclass(base, OwnProcess))

    def _start(self) -> subprocess.Popen:
        adapter = self._adapter_class()
        package_root = str(Path(__file__).resolve().parents[2])
        environment = {**os.environ, **self.process_environment, **self._extra_environment}
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, environment.get("PYTHONPATH")]))
        self._log = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__, f"{adapter.__module__}:{adapter.__qualname__}", self.name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=environment,
        )
        return self._process

    def _last_words(self) -> str:
        """The last line the child wrote to its stderr, and how it ended."""
        status = self._process.wait(timeout=10) if self._process else None
        self._log.seek(0)
        lines = self._log.read().decode("utf-8", "replace").strip().splitlines()
        how = f"signal {-status}" if status is not None and status < 0 else f"exit status {status}"
        return f"{how}: {lines[-1][:200]}" if lines else how

    def _call(self, method: str, *args: Any) -> Any:
        process = self._process if self._process and self._process.poll() is None else self._start()
        try:
            _send(process.stdin, (method, pickle.dumps(args[0]) if args else None, args[1:]))
            status, payload = _receive(process.stdout)
        except (OSError, EOFError):
            words = self._last_words()
            self._process = None
            raise ProcessEnded(f"the {self.name} process ended during {method} ({words})") from None
        if status == "ok":
            return payload
        if status == "not_applicable":
            raise NotApplicable(payload)
        kind, message = payload
        error_class = getattr(builtins, kind, None)
        if isinstance(error_class, type) and issubclass(error_class, Exception):
            try:
                error = error_class(message)
            except Exception:  # noqa: BLE001 - a built-in exception that takes other arguments (UnicodeDecodeError)
                error = None
            if error is not None:
                raise error
        raise RuntimeError(f"{kind}: {message}")

    def close(self) -> None:
        """Ends the child: it ends when its stdin closes, or is killed if busy (it also ends by itself when this
        process goes, see `serve`)."""
        if self._process is not None:
            self._process.stdin.close()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def bare_gradients(self, case, inputs, dtype, variant, device):
        raise NotImplementedError(f"{self.name} runs in a process of its own: a call from here times the pipe")


def _forwarding(method: str):
    def forward(self, *args):
        return self._call(method, *args)

    forward.__name__ = forward.__qualname__ = method
    forward.__doc__ = f"`{method}` of the adapter, run in its process."
    return forward


def _end_with(parent: int) -> None:
    """Ends this process once its parent is gone, even in the middle of a call (a worker ended for a timeout
    leaves a busy child, which never reads the end of its stdin)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="end-with-parent").start()


def serve(location: str, name: str) -> None:
    """The child's loop: one request at a time from stdin, one reply each on the original stdout (the framework's
    own prints go to stderr), until stdin closes."""
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    _end_with(os.getppid())
    from conformance import faults

    faults.plant_in_process(name)
    module_name, _, class_name = location.partition(":")
    adapter = getattr(importlib.import_module(module_name), class_name)()
    # every case sent, kept for the child's life as the suite keeps its cases for the session: an adapter's caches
    # are keyed by the Case object, whose id a case dropped here could pass on to another
    cases: dict[bytes, Any] = {}
    while True:
        try:
            method, case_bytes, rest = _receive(requests)
        except EOFError:
            return
        if method not in FORWARDED:
            _send(replies, ("error", ("ValueError", f"{method!r} is not a call a backend process takes")))
            continue
        arguments = rest
        if case_bytes is not None:
            if case_bytes not in cases:
                cases[case_bytes] = pickle.loads(case_bytes)  # noqa: S301 - sent by the proxy above
            arguments = (cases[case_bytes], *rest)
        try:
            reply = ("ok", getattr(adapter, method)(*arguments))
        except NotApplicable as reason:
            reply = ("not_applicable", str(reason))
        except Exception as error:  # noqa: BLE001 - a crash inside the framework is the call's result
            first_line = str(error).splitlines()[0][:300] if str(error) else ""
            reply = ("error", (type(error).__name__, first_line))
        _send(replies, reply)


if __name__ == "__main__":
    serve(*sys.argv[1:3])
