"""quantizeml Keras layers: quantizers, calibration, and the Quantized* twins of Keras layers.

Every class is registered with Keras serialization under the ``quantizeml`` package when this
module is imported, so saved models reload without custom_objects.
"""
from .base import eager_layer_calls, register_quantize_target, saturation
from .registry import (ACTIVATION, BLOCK_END, QUANTIZATION_TARGETS, TwinSpec, register_twin,
                       twin_spec, twin_specs)
from .calibration import (FixedPointRecorder, NonTrackFixedPointVariable, NonTrackVariable,
                          OutputObserver, QFloatRecorder, TensorRecorder, is_recording,
                          recording)
from .quantizers import (AlignedWeightQuantizer, Dequantizer, InputQuantizer, OutputQuantizer,
                         Quantizer, WeightQuantizer)
from .activations import QuantizedReLU
from .table import (QuantizedActivation, QuantizedELU, QuantizedLeakyReLU, QuantizedPReLU,
                    QuantizedTableReLU, TableReLU)
from .dropout import QuantizedDropout
from .normalization import QuantizedBatchNormalization
from .pooling import (QuantizedAveragePooling2D, QuantizedGlobalAveragePooling2D,
                      QuantizedGlobalMaxPooling2D, QuantizedMaxPool2D)
from .rescaling import QuantizedRescaling
from .reshaping import (QuantizedFlatten, QuantizedPermute, QuantizedReshape, QuantizedSlicing,
                        Slicing)
from .skip import Add, QuantizedAdd, QuantizedConcatenate
from .merging import QuantizedMaximum, QuantizedMinimum, QuantizedMultiply, QuantizedSubtract
from .spatial import (QuantizedCropping2D, QuantizedResizing, QuantizedUpSampling2D,
                      QuantizedZeroPadding2D)
from .convolution import PaddedConv2D, QuantizedConv2D, QuantizedConv2DTranspose
from .dense import QuantizedDense
from .depthwise import (DepthwiseConv2DTranspose, QuantizedDepthwiseConv2D,
                        QuantizedDepthwiseConv2DTranspose)
from .separable import QuantizedSeparableConv2D
from .attention import Attention, QuantizedAttention, QuantizedSoftmax, string_to_softmax
from .dot import QuantizedDot
from .layer_norm import (LayerMadNormalization, QuantizedLayerNormalization,
                         QuantizedLayerStdNormalization)
from .lowbit import QuantConv2D, QuantDense, QuantDepthwiseConv2D, binary_digits_cnn
from .shiftmax import QuantizedShiftmax, Shiftmax, shiftmax
from .tokens import (AddPositionEmbs, ClassToken, ExtractToken, QuantizedAddPositionEmbs,
                     QuantizedClassToken, QuantizedExtractToken, TokenQuantizer)
from .quantize_wrapper import QuantizeWrapper, quantize_annotate_layer
