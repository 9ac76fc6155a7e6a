"""WeightClip: the clip formula, name lookup and config round trip."""
import numpy as np
import pytest
import tf_keras as keras

from quantizeml.quantizers import WeightClip, get_constraint, weight_clip


@pytest.mark.parametrize("clip_value", [1, 0.5, 3.0], ids=["1", "0.5", "3"])
def test_weight_clip(clip_value):
    w = np.linspace(-4, 4, 33).astype(np.float32)
    np.testing.assert_array_equal(WeightClip(clip_value)(w).numpy(),
                                  np.clip(w, -clip_value, clip_value))


def test_lookup_and_round_trip():
    assert get_constraint("weight_clip") == WeightClip() == weight_clip()
    assert get_constraint("WeightClip") == WeightClip()
    assert isinstance(get_constraint("non_neg"), keras.constraints.NonNeg)
    assert get_constraint(None) is None
    config = keras.constraints.serialize(WeightClip(0.5))
    assert get_constraint(config) == WeightClip(0.5)
    assert WeightClip.from_config(WeightClip(2).get_config()) == WeightClip(2)


@pytest.mark.parametrize("clip_value", [0, -1.0, "1", True],
                         ids=["zero", "negative", "str", "bool"])
def test_bad_clip_value(clip_value):
    with pytest.raises(ValueError, match="clip_value expected a real number > 0"):
        WeightClip(clip_value)
