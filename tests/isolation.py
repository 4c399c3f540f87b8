"""Other people's native code (llama.cpp through llama-cpp-python) runs in a child process.

A segfault in a library loaded into pytest's own process ends the whole suite with no report
(llama.cpp's AMX matmul did, on Intel Xeons). `in_child(fn, *args)` calls `fn(*args)` in a fresh
Python process and hands back its result; if the child dies, the one test calling it fails and
names the signal, and the rest of the suite runs on. Keep assertions in the parent: the child
computes, the test judges.
"""

from __future__ import annotations

import multiprocessing
import signal
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


def _call(conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        conn.send((True, fn(*args)))
    except BaseException:  # noqa: BLE001 - the parent reports whatever it was
        conn.send((False, traceback.format_exc()))
    finally:
        conn.close()


def in_child(fn: Callable[..., T], *args: Any, timeout: float = 240) -> T:
    """`fn(*args)` in a spawned process (a module-level function, picklable arguments and result)."""
    ctx = multiprocessing.get_context("spawn")  # no fork of pytest's threads and loaded libraries
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_call, args=(send, fn, args), daemon=True)
    child.start()
    send.close()
    try:
        answer = receive.recv() if receive.poll(timeout) else None
    except EOFError:  # it died before answering
        answer = None
    child.join(5)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail(f"{fn.__name__} gave no answer in {timeout:g} s in its child process (killed)")
    code = child.exitcode or 0
    if code < 0:
        pytest.fail(f"{fn.__name__} crashed its child process: {signal.Signals(-code).name}", pytrace=False)
    if answer is None:
        pytest.fail(f"{fn.__name__}'s child process exited ({code}) without an answer")
    ok, value = answer
    if not ok:
        pytest.fail(f"{fn.__name__} raised in its child process:\n{value}", pytrace=False)
    return value  # type: ignore[no-any-return]
