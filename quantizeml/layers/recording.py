"""The recording state: whether quantizers record what they compute, and a generation counter.

Its own module (below ``layers.base`` and ``layers.calibration``) so that the layer calls and the
recorders read one state with no import cycle. See :mod:`quantizeml.layers.calibration.recorders`.
"""
import contextlib
import threading

_STATE = threading.local()
#: Bumped whenever a record is stored or dropped: compiled eager calls (see
#: :mod:`quantizeml.layers.base`) capture records as constants and retrace when it changes.
_GENERATION = [0]


def generation():
    """int: a counter that changes whenever any record is stored or dropped."""
    return _GENERATION[0]


def is_recording():
    """bool: True inside a ``recording(True)`` context (per thread)."""
    return getattr(_STATE, "enabled", False)


@contextlib.contextmanager
def recording(enable):
    """Enable or disable recording.

    Args:
        enable (bool): True to enable recording, False to disable it.
    """
    previous = is_recording()
    _STATE.enabled = bool(enable)
    try:
        yield
    finally:
        _STATE.enabled = previous


def bump_generation():
    """Marks that a record was stored or dropped (compiled eager calls retrace)."""
    _GENERATION[0] += 1
