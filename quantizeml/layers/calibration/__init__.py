"""Calibration observers and recording."""
from .observer import OutputObserver
from .recorders import (FixedPointRecorder, NonTrackFixedPointVariable, NonTrackVariable,
                        QFloatRecorder, TensorRecorder, is_recording, recording)

__all__ = ["OutputObserver", "recording", "is_recording", "TensorRecorder",
           "FixedPointRecorder", "QFloatRecorder", "NonTrackVariable",
           "NonTrackFixedPointVariable"]
