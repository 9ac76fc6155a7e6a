"""Prepares a model for quantization by chaining the transforms."""
import gc

from .align_rescaling import align_rescaling
from .flatten_model import flatten_model
from .fold_custom_scale import fold_custom_scale
from .fold_batchnorms import fold_batchnorms
from .fold_layer_scale import fold_layer_scale
from .remove_identities import remove_identities
from .remove_stochastic_depth import remove_stochastic_depth
from .fold_normalization import fold_normalization
from .fuse_hard_swish import fuse_hard_swish
from .invert_batchnorm_pooling import invert
from .invert_relu_maxpool import invert_relu_maxpool
from .lift_1d import lift_1d
from .remove_zeropadding2d import remove_zeropadding2d
from .replace_aliases import replace_aliases
from .replace_lambda import replace_lambda
from .replace_leaky_relu import replace_leaky_relu
from .replace_tfop_arithmetic import replace_tfop_arithmetic
from .rescaling_to_depthwise import rescaling_to_depthwise
from .split_activations import split_activations
from .split_group_normalization import split_group_normalization
from .split_multi_head_attention import split_multi_head_attention

__all__ = ["sanitize"]


def sanitize(model, float_layers=()):
    """Sanitize a model preparing it for quantization.

    This is a wrapping successive calls to several model transformations which aims at making
    the model quantization ready:

    1. :func:`flatten_model`: nested functional/Sequential models are flattened (subclassed
       models raise a ValueError), then :func:`remove_stochastic_depth`: ConvNeXt's drop
       path layers (the identity at inference) are removed, and :func:`remove_identities`:
       GaussianNoise, GaussianDropout, AlphaDropout, SpatialDropout, ActivityRegularization
       and Identity layers (the identity at inference) too, and :func:`replace_aliases`:
       ELU() becomes Activation('elu'), Average of two inputs Add(average=True),
       ThresholdedReLU(0) ReLU, TimeDistributed(Dense) the Dense itself, and
       :func:`split_multi_head_attention`: MultiHeadAttention self-attentions become Dense
       query, key and value projections, an Attention and the output Dense, and
       :func:`split_group_normalization`: GroupNormalization becomes reshapes, a
       LayerNormalization per group and a per-channel affine DepthwiseConv2D,
    2. :func:`replace_lambda`: Lambda/TFOpLambda relu, relu6, transpose, reshape and add, and
       Activation('relu'/'relu6'), become ReLU, Permute, Reshape and Add layers,
       then :func:`fuse_hard_swish`: the MobileNetV3 hard-swish ``x * relu6(x + 3) / 6`` and
       hard-sigmoid ``relu6(x + 3) / 6`` become one Activation layer, and
       :func:`replace_tfop_arithmetic`: the other TFOpLambda arithmetic and activations become
       Add/Subtract/Multiply, Rescaling (a constant operand), ReLU and Activation layers
       (and slices ``x[..., :16]`` Slicing layers),
       and :func:`replace_leaky_relu`: a ReLU with a negative slope becomes a LeakyReLU
       (a TableReLU with a threshold or a maximum too),
    3. :func:`remove_zeropadding2d`: ZeroPadding2D followed by a 'valid' convolution become a
       'same' convolution,
    4. :func:`invert_batchnorm_pooling`: BatchNormalization layers move before the pooling
       that precedes them (skipping, instead of raising, BN with non-positive gammas after a
       max pooling),
    5. :func:`fold_batchnorms`: BatchNormalization layers are folded into the processing
       layer before them,
       then :func:`fold_normalization`: Normalization layers (per-channel preprocessing) fold
       into the Conv2D/DepthwiseConv2D/Dense after them (or merge into the Rescaling before
       them when that conv pads and the mean is not zero), :func:`fold_layer_scale`:
       LayerScale layers (ConvNeXt) fold into the layer before them, and
       :func:`fold_custom_scale`: InceptionResNetV2's scaled residuals ``x + up * scale``
       become Add layers, the scale folded into the layer producing ``up``,
       then :func:`lift_1d`: 1-D convolutions, poolings, paddings, croppings and upsamplings
       become their 2-D counterparts on a height of 1, between Reshapes that keep the
       channels axis,
    6. :func:`invert_relu_maxpool`: MaxPool2D moves before the ReLU that precedes it,
    7. :func:`align_rescaling`: Rescaling offsets go into the next layer's bias,
    8. :func:`rescaling_to_depthwise`: a Rescaling left inside the model with an offset, a
       negative or a per-channel scale becomes a per-channel affine DepthwiseConv2D.

    Right after flattening, :func:`split_activations` moves the fused activations of
    Conv/Dense layers into layers of their own (ReLU, or an Activation that stays in the float
    tail, e.g. a final softmax).

    The outputs stay equal (to float rounding), and the order of the nodes and of their
    inputs is kept.

    Args:
        model (keras.Model): the input model
        float_layers (iterable of str, optional): names of layers the caller keeps float
            (quantize()'s float islands): a MultiHeadAttention or GroupNormalization named
            there stays whole.
            Defaults to ().

    Returns:
        keras.Model: the sanitized model (the input model itself when nothing changes)

    Raises:
        ValueError: if the model or one of its nested models is a subclassed model.

    Example:
        ```python
        model = sanitize(keras.applications.MobileNet(weights=None))
        ```
    """
    steps = (flatten_model, remove_stochastic_depth, remove_identities, replace_aliases,
             lambda m: split_multi_head_attention(m, keep=float_layers),
             lambda m: split_group_normalization(m, keep=float_layers), split_activations,
             replace_lambda, fuse_hard_swish, replace_tfop_arithmetic, replace_leaky_relu,
             remove_zeropadding2d,
             lambda m: invert(m, strict=False), fold_batchnorms, fold_normalization,
             fold_layer_scale, fold_custom_scale, lift_1d, invert_relu_maxpool, align_rescaling,
             rescaling_to_depthwise)
    source = model
    for step in steps:
        previous, model = model, step(model)
        if model is not previous and previous is not source:
            # A rebuilt intermediate model is a reference cycle (layers <-> nodes): collected
            # now, its weights' memory is reused by the next rebuild instead of adding up
            # (peak RSS of quantize() on ResNetRS101: 2437 -> 1954 MiB).
            del previous
            gc.collect()
    return model
