"""QuantizationParams: the global quantization parameters, and the quantization() context."""
import contextlib
import dataclasses
import threading

from ..tensors import BUFFER_BITS


@dataclasses.dataclass(frozen=True)
class QuantizationParams:
    """Class that holds quantization parameters. This is a read-only data class.

    Args:
        activation_bits (int, optional): activations quantization bitwidth. Defaults to 8.
        per_tensor_activations (bool, optional): whether to quantize activation per-tensor or
            per-axis. Defaults to False.
        weight_bits (int, optional): weights quantization bitwidth. Defaults to 8.
        output_bits (int, optional): outputs quantization bitwidth. Defaults to 8.
        input_weight_bits (int, optional): weights quantization bitwidth for the first layer.
            Defaults to 8.
        buffer_bits (int, optional): maximal buffer bitwidth allowed in operations.
            Defaults to 32.

    Raises:
        ValueError: when a bitwidth is not an int in its allowed range.
    """
    activation_bits: int = 8
    per_tensor_activations: bool = False
    weight_bits: int = 8
    output_bits: int = 8
    input_weight_bits: int = 8
    buffer_bits: int = 32

    def __post_init__(self):
        for name in ("activation_bits", "weight_bits", "output_bits", "input_weight_bits",
                     "buffer_bits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) \
                    or not 1 <= value <= BUFFER_BITS:
                raise ValueError(f"QuantizationParams: {name} expected an int in "
                                 f"[1, {BUFFER_BITS}]. Received: {name}={value!r}")
        for name in ("activation_bits", "output_bits"):
            if getattr(self, name) < 2:
                raise ValueError(f"QuantizationParams: {name} expected an int in "
                                 f"[2, {BUFFER_BITS}]. Received: {name}={getattr(self, name)}")
        for name in ("activation_bits", "weight_bits", "output_bits", "input_weight_bits"):
            if getattr(self, name) > self.buffer_bits:
                raise ValueError(f"QuantizationParams: {name} expected <= buffer_bits "
                                 f"({self.buffer_bits}). Received: {name}={getattr(self, name)}")
        if not isinstance(self.per_tensor_activations, bool):
            raise ValueError("QuantizationParams: per_tensor_activations expected a bool. "
                             f"Received: per_tensor_activations={self.per_tensor_activations!r}")


_STATE = threading.local()


def get_quantization_params():
    """Returns global quantization parameters.

    Returns:
        QuantizationParams: the quantization parameters (of the innermost ``quantization``
        context, else the defaults).
    """
    return getattr(_STATE, "qparams", None) or QuantizationParams()


@contextlib.contextmanager
def quantization(qparams):
    """Sets quantization parameters in a context.

    Args:
        qparams (QuantizationParams): quantization parameters.
    """
    if not isinstance(qparams, QuantizationParams):
        raise TypeError("quantization expected a QuantizationParams. "
                        f"Received: qparams={qparams!r}")
    previous = getattr(_STATE, "qparams", None)
    _STATE.qparams = qparams
    try:
        yield qparams
    finally:
        _STATE.qparams = previous
