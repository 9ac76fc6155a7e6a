"""Model transforms: pure ``Model -> Model`` graph rewrites that prepare a model for
quantization. Each returns its input model unchanged when it has nothing to do.
"""
from .align_rescaling import align_rescaling
from .flatten_model import flatten_model
from .fold_custom_scale import fold_custom_scale
from .fold_batchnorms import fold_batchnorms
from .fold_layer_scale import fold_layer_scale
from .fold_normalization import fold_normalization
from .fuse_hard_swish import fuse_hard_swish
from .insert_layer import insert_layer
from .insert_rescaling import insert_rescaling
from .invert_batchnorm_pooling import invert_batchnorm_pooling
from .invert_relu_maxpool import invert_relu_maxpool
from .lift_1d import lift_1d
from .remove_identities import remove_identities
from .remove_stochastic_depth import remove_stochastic_depth
from .remove_zeropadding2d import remove_zeropadding2d
from .replace_aliases import replace_aliases
from .replace_lambda import replace_lambda
from .replace_leaky_relu import replace_leaky_relu
from .replace_tfop_arithmetic import replace_tfop_arithmetic
from .rescaling_to_depthwise import rescaling_to_depthwise
from .sanitize import sanitize
from .split_activations import split_activations
from .split_group_normalization import split_group_normalization
from .split_multi_head_attention import split_multi_head_attention

__all__ = ["align_rescaling", "flatten_model", "fold_batchnorms", "fold_custom_scale",
           "fold_layer_scale", "fold_normalization", "fuse_hard_swish", "insert_layer",
           "insert_rescaling", "invert_batchnorm_pooling", "invert_relu_maxpool", "lift_1d",
           "remove_identities", "remove_stochastic_depth", "remove_zeropadding2d",
           "replace_aliases", "replace_lambda", "replace_leaky_relu", "replace_tfop_arithmetic",
           "rescaling_to_depthwise",
           "sanitize", "split_activations", "split_group_normalization",
           "split_multi_head_attention"]
