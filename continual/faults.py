"""Fault injection for the tests of resume and signals: a command sends itself a signal at a
named point (a chunk, a task's end, a checkpoint write, its start, its results, its figures)."""

from __future__ import annotations

import os
import signal
from collections import Counter

_FAULTS: Counter = Counter()


def fault_point(name: str) -> None:
    """Fault injection for the resume tests: with CONTINUAL_FAULT=name:N[:SIGNAL[:TIMES]] in
    the environment, the N-th time the command reaches this point it sends itself SIGNAL
    (default KILL: no cleanup at all, as in a crash), TIMES times in a row (default once)."""
    spec = os.environ.get("CONTINUAL_FAULT", "").split(":")
    if spec[0] != name:
        return
    _FAULTS[name] += 1
    if _FAULTS[name] == int(spec[1]):
        for _ in range(int(spec[3]) if len(spec) > 3 else 1):
            os.kill(os.getpid(), getattr(signal, "SIG" + (spec[2] if len(spec) > 2 else "KILL")))
