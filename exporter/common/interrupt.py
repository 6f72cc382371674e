"""Ctrl-C that is not lost.

Python drops an exception raised inside a weakref callback or ``__del__`` ("Exception ignored
in ..."), so a SIGINT whose KeyboardInterrupt lands there vanishes and a long command runs on
to the end. The handler also records the request; long loops (``edgepack tune``'s trials) ask
:func:`requested` at their checkpoints and stop there.
"""

from __future__ import annotations

import signal

_requested = False


def _on_sigint(signum, frame) -> None:
    global _requested
    _requested = True
    raise KeyboardInterrupt


def install() -> None:
    """Handle SIGINT as Python does (KeyboardInterrupt), remembering that it came."""
    global _requested
    _requested = False
    signal.signal(signal.SIGINT, _on_sigint)


def requested() -> bool:
    """Whether a SIGINT came since :func:`install` (even one whose exception was lost)."""
    return _requested


def checkpoint() -> None:
    """Raise KeyboardInterrupt here when a SIGINT came and its exception was lost."""
    if _requested:
        raise KeyboardInterrupt
