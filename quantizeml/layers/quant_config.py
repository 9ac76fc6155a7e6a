"""The quant_config plumbing shared by the Quantized* layers without a reducing kernel.

:class:`QuantConfigMixin` validates and stores the ``quant_config`` dict, creates the optional
OutputQuantizer and the integer buffer, converts QFloat inputs to FixedPoint where a layer
needs a power-of-two grid, and returns ``quant_config`` from ``get_config``.
"""
import copy

from ..recipes.requantize import qfloat_to_fixed_point
from ..tensors import QFloat
from .base import StaticCallMixin, check_quant_config, clip_to_buffer
from .quantizers import OutputQuantizer
from .quantizers.quantizers import check_bitwidth

#: Default integer buffer of the layers, sign bit included.
DEFAULT_BUFFER_BITWIDTH = 32
#: quant_config keys every layer of this family accepts.
OUTPUT_KEYS = ("output_quantizer", "buffer_bitwidth")


class QuantConfigMixin(StaticCallMixin):
    """Mixin of a Keras layer configured by a ``quant_config`` dict.

    Place it before the Keras base class (``class QuantizedX(QuantConfigMixin, keras.layers.X)``)
    and call :meth:`_init_quant_config` at the end of ``__init__``. It sets:

    - ``self.quant_config``: a plain copy of the dict (not wrapped by Keras tracking, so that
      ``get_config`` stays JSON-native);
    - ``self.buffer_bitwidth``: ``quant_config["buffer_bitwidth"]`` (default 32);
    - ``self.out_quantizer``: an OutputQuantizer built from ``quant_config["output_quantizer"]``
      (named ``<layer>/output_quantizer``), or None.
    """

    def _init_quant_config(self, quant_config, allowed=OUTPUT_KEYS):
        config = check_quant_config(self.name, quant_config, allowed)
        for key, value in config.items():
            if key.endswith("_quantizer") and not isinstance(value, dict):
                raise TypeError(f"Layer {self.name}: quant_config['{key}'] expected a dict of "
                                f"quantizer arguments. Received: {key}={value!r}")
        # A dict attribute would be wrapped in a Keras tracking proxy (not JSON-serializable).
        object.__setattr__(self, "quant_config", copy.deepcopy(config))
        self.buffer_bitwidth = check_bitwidth(
            config.get("buffer_bitwidth", DEFAULT_BUFFER_BITWIDTH), self.name,
            name="buffer_bitwidth")
        out_config = config.get("output_quantizer")
        self.out_quantizer = None if out_config is None else OutputQuantizer(
            name=self.name + "/output_quantizer", **out_config)

    def _quantize_output(self, outputs):
        """Applies the output quantizer when one is configured, else clips the outputs to the
        integer buffer (saturation recorded)."""
        if self.out_quantizer is not None:
            return self.out_quantizer(outputs)
        if isinstance(outputs, QFloat):
            return QFloat(clip_to_buffer(self, outputs.fp, self.buffer_bitwidth), outputs.scales)
        return clip_to_buffer(self, outputs, self.buffer_bitwidth)

    @property
    def scale_bits(self):
        """int: the bits of the scales when a QFloat input is converted to a FixedPoint (the
        output quantizer's ``scale_bits``, 8 when there is none)."""
        return self.quant_config.get("output_quantizer", {}).get("scale_bits", 8)

    def _to_fixed_point(self, x):
        """A QFloat input as a FixedPoint, a FixedPoint unchanged.

        The scales are quantized on ``scale_bits`` (QFloat.quantize_scales) and multiplied with
        the values: an exact product with ``value_bits + scale_bits + 1`` value bits, possibly
        wider than the buffer (as in OutputQuantizer, which brings it back; without one, the
        layer output is clipped to the buffer).
        """
        if not isinstance(x, QFloat):
            return x
        return qfloat_to_fixed_point(x, self.scale_bits, narrow=True)

    def get_config(self):
        return {**super().get_config(), "quant_config": copy.deepcopy(self.quant_config)}
