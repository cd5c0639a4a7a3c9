"""A Ctrl-C that cannot be lost between two trials.

Python ignores an exception raised inside a finalizer or a weakref callback: it prints "Exception ignored
in ..." and goes on. A Ctrl-C that lands while SQLAlchemy or pyarrow runs such a callback therefore
vanishes, and a search would run to its end instead of stopping. `interrupt_guard` also records each
SIGINT in a flag, which the search loop checks after every trial. The exception still interrupts the
trial at once when it can; when it cannot, the search stops after that trial.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["InterruptFlag", "interrupt_guard"]


@dataclass
class InterruptFlag:
    raised: bool = False


@contextlib.contextmanager
def interrupt_guard() -> Iterator[InterruptFlag]:
    """Within the block, SIGINT sets the flag, then acts as before (KeyboardInterrupt by default)."""
    flag = InterruptFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signal handlers belong to the main thread; elsewhere Ctrl-C is not ours to see
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:  # started with SIGINT ignored (nohup, a script's &): keep it ignored
        yield flag
        return

    def handler(signum, frame) -> None:
        flag.raised = True
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
