"""``export(qmodel)``: a quantized Keras model (from ``quantizeml.models.quantize``) as ONNX.

Two forms (``format``):

* ``"exact"`` (:mod:`.exact`, with the emitters of :mod:`.convolutions` and
  :mod:`.transformer`): integer outputs equal to the Keras model's bit for bit, standard
  operators, float carriers where static bounds prove them exact;
* ``"qdq"`` (:mod:`.qdq`): QuantizeLinear/DequantizeLinear around float operators, which
  onnxruntime (and other int8 runtimes) fuse into int8 kernels; within one output step of Keras.

The emitters are keyed by the ``export`` name of each twin's registration
(``quantizeml.layers.registry``): a twin registered without an emitter cannot be exported
(``supported_layers`` lists those that can).
"""
import tf_keras as keras

# imported for their registrations: integer emitters (convolutions, transformer) and float
# ones (float_layers, float_transformer)
from . import convolutions, float_layers, float_transformer, transformer  # noqa: F401
from . import qdq
from .exact import EMITTERS, FLOAT_EMITTERS, OPSET, _check_supported, export_exact, \
    supported_layers

__all__ = ["export", "FORMATS", "EMITTERS", "FLOAT_EMITTERS", "OPSET", "supported_layers"]

#: The forms ``export`` writes.
FORMATS = ("exact", "qdq")


def export(qmodel, path=None, format="exact"):
    """Exports a quantized Keras model to an ONNX model that reproduces it bit-exactly
    (``format="exact"``, the default) or to the deployable int8 QDQ form (``format="qdq"``,
    see :mod:`quantizeml.onnx_support.qdq`: QuantizeLinear/DequantizeLinear around float
    operators, which onnxruntime fuses into int8 kernels; within one output step of Keras,
    float outputs only).

    The graph computes in int64 (and exact float64 for the input quantization) with standard
    ONNX operators only (opset 17), so ``onnx.checker.check_model(full_check=True)`` passes and
    plain ``onnxruntime`` runs it. Its inputs are the float Keras inputs (NHWC, dynamic batch);
    its outputs are the dequantized float outputs (named after the Keras outputs) followed by
    the integer values before the final Dequantizers (``integer_outputs``, then
    ``integer_outputs_1``, ...; a float tail reading several quantized tensors, e.g.
    cross-attention, adds ``integer_outputs_source1``, ...), which equal the Keras QTensors'
    ``values`` bit for bit.

    Args:
        qmodel (keras.Model): a functional model from ``quantizeml.models.quantize``.
        path (str, optional): where to save the ONNX model. Defaults to None (not saved).
        format (str, optional): 'exact' or 'qdq'. Defaults to 'exact'.

    Returns:
        onnx.ModelProto: the exported model.

    Raises:
        ValueError: for an unknown format, when the model has layers the exporter cannot
            export (all listed), or quantized tensors it cannot represent exactly (weights
            wider than 8 bits).
    """
    if format not in FORMATS:
        raise ValueError(f"export expected format in {FORMATS}. Received: format={format!r}")
    if not isinstance(qmodel, keras.Model) or not hasattr(qmodel, "inputs") \
            or qmodel.inputs is None:
        raise ValueError(f"export expected a functional keras.Model. Received: {qmodel!r}")
    _check_supported(qmodel)
    if format == "qdq":
        return qdq.export_qdq(qmodel, path)
    return export_exact(qmodel, path)
