"""A Ctrl-C that cannot be lost between two trials.

Python ignores an exception raised inside a finalizer or a weakref callback: it prints "Exception ignored
in ..." and goes on. A Ctrl-C that lands while SQLAlchemy or pyarrow runs such a callback therefore
vanishes, and a search would run to its end instead of stopping. `interrupt_guard` also records each
SIGINT in a flag, which the search loop checks after every trial. The exception still interrupts the
trial at once when it can; when it cannot, the search stops after that trial.

A Ctrl-C must also not land inside a library's bookkeeping: one that arrives while Optuna records a trial
leaves its ``_run_trial`` with an unbound local and turns the interrupt into an internal error. With
``deferred=True`` the guard only records SIGINT, and raises it at once only inside
``InterruptFlag.immediate()`` blocks (the training itself); the loop raises it when it next checks.

The Ctrl-C such a callback swallowed is recorded, so Python's "Exception ignored ... KeyboardInterrupt" report
of it (a traceback on the user's terminal) is left out, through `sys.unraisablehook`; any other is reported.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["InterruptFlag", "interrupt_guard"]


@dataclass
class InterruptFlag:
    raised: bool = False
    deferring: bool = False

    @contextlib.contextmanager
    def immediate(self) -> Iterator[None]:
        """Within the block a Ctrl-C interrupts at once, and one already recorded is raised on entry."""
        if self.raised:
            raise KeyboardInterrupt
        was_deferring, self.deferring = self.deferring, False
        try:
            yield
        finally:
            self.deferring = was_deferring


@contextlib.contextmanager
def interrupt_guard(deferred: bool = False) -> Iterator[InterruptFlag]:
    """Within the block, SIGINT sets the flag, then acts as before (KeyboardInterrupt by default).

    With ``deferred`` it only sets the flag, except inside ``flag.immediate()``.
    """
    flag = InterruptFlag(deferring=deferred)
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signal handlers belong to the main thread; elsewhere Ctrl-C is not ours to see
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:  # started with SIGINT ignored (nohup, a script's &): keep it ignored
        yield flag
        return

    def handler(signum, frame) -> None:
        flag.raised = True
        if flag.deferring:
            return
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, frame)
        else:
            raise KeyboardInterrupt

    previous_hook = sys.unraisablehook

    def unraisable(report) -> None:  # the flag holds a Ctrl-C a finalizer swallowed: no traceback for it
        if not (flag.raised and report.exc_type is KeyboardInterrupt):
            previous_hook(report)

    signal.signal(signal.SIGINT, handler)
    sys.unraisablehook = unraisable
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = previous_hook
