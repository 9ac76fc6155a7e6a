"""The quantizer registry: names and aliases, get/serialize/deserialize, errors."""
import json

import pytest
import tf_keras as keras

from quantizeml import quantizers as q
from quantizeml.quantizers.registry import register_quantizer

# The names users write, from the seeds (Larq's string identifiers, Keras 3's, TF-MOT's).
NAMES = [
    ("ste_sign", q.SteSign), ("SteSign", q.SteSign),
    ("approx_sign", q.ApproxSign), ("ApproxSign", q.ApproxSign),
    ("ste_heaviside", q.SteHeaviside), ("SteHeaviside", q.SteHeaviside),
    ("swish_sign", q.SwishSign), ("SwishSign", q.SwishSign),
    ("magnitude_aware_sign", q.MagnitudeAwareSign),
    ("MagnitudeAwareSign", q.MagnitudeAwareSign),
    ("ste_tern", q.SteTern), ("SteTern", q.SteTern),
    ("dorefa_quantizer", q.DoReFa), ("dorefa", q.DoReFa), ("DoReFa", q.DoReFa),
    ("DoReFaQuantizer", q.DoReFa),
    ("abs_max_quantizer", q.AbsMaxQuantizer), ("AbsMaxQuantizer", q.AbsMaxQuantizer),
    ("last_value_quantizer", q.LastValueQuantizer),
    ("LastValueQuantizer", q.LastValueQuantizer),
    ("moving_average_quantizer", q.MovingAverageQuantizer),
    ("MovingAverageQuantizer", q.MovingAverageQuantizer),
    ("all_values_quantizer", q.AllValuesQuantizer),
    ("AllValuesQuantizer", q.AllValuesQuantizer),
    ("noop", q.NoOp), ("NoOp", q.NoOp),
]
#: required constructor arguments.
REQUIRED = {q.NoOp: {"precision": 2}, q.AbsMaxQuantizer: {"axis": -1}}


@pytest.mark.parametrize("name, cls", NAMES, ids=[n for n, _ in NAMES])
def test_get_by_name(name, cls):
    quantizer = q.get(name, **REQUIRED.get(cls, {}))
    assert type(quantizer) is cls
    assert quantizer == cls(**REQUIRED.get(cls, {}))
    assert name in q.registered_names()


@pytest.mark.parametrize("name, cls", NAMES, ids=[n for n, _ in NAMES])
def test_serialize_by_config_round_trip(name, cls):
    quantizer = q.get(name, **REQUIRED.get(cls, {}))
    config = q.serialize(quantizer)
    assert config["registered_name"] == f"quantizeml>{cls.__name__}"
    revived = q.deserialize(json.loads(json.dumps(config)))
    assert revived == quantizer and type(revived) is cls
    # the dict form also works with an alias as class_name
    assert q.get({"class_name": name, "config": config["config"]}) == quantizer


def test_get_kwargs_and_every_identifier_kind():
    assert q.get(None) is None
    assert q.get("ste_sign", clip_value=0.5) == q.SteSign(clip_value=0.5)
    assert q.get(q.SteTern) == q.SteTern()
    assert q.get(q.DoReFa, k_bit=3) == q.DoReFa(k_bit=3)
    instance = q.SwishSign(beta=2.0)
    assert q.get(instance) is instance
    assert q.get(q.ste_sign) is q.ste_sign
    assert q.get({"class_name": "SteSign", "config": {"clip_value": 2.0}}) == \
        q.SteSign(clip_value=2.0)


def test_registered_functions_serialize():
    for fn in (q.ste_sign, q.approx_sign, q.ste_heaviside, q.swish_sign,
               q.magnitude_aware_sign, q.ste_tern, q.dorefa):
        assert q.deserialize(json.loads(json.dumps(q.serialize(fn)))) is fn
    with pytest.raises(TypeError, match="registered with"):
        q.serialize(lambda x: x)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="Quantizer identifier expected one of") as info:
        q.get("ste_sing")
    message = str(info.value)
    assert "Received: identifier='ste_sing'" in message
    for name in ("ste_sign", "dorefa_quantizer", "SteTern", "last_value_quantizer"):
        assert repr(name) in message
    with pytest.raises(ValueError, match="Quantizer identifier expected one of"):
        q.deserialize({"class_name": "Nope", "config": {}})


def test_missing_required_argument_says_how():
    with pytest.raises(ValueError, match=r"expected its required arguments \['precision'\]"):
        q.get("noop")


@pytest.mark.parametrize("identifier", [42, 1.5, [q.SteSign()]], ids=["int", "float", "list"])
def test_bad_identifier_type(identifier):
    with pytest.raises(TypeError, match="Quantizer identifier expected None, a str"):
        q.get(identifier)


def test_kwargs_with_an_instance_raise():
    with pytest.raises(TypeError, match="kwargs only with a str or class"):
        q.get(q.SteSign(), clip_value=2.0)


def test_duplicate_registration_raises():
    fresh = type("FreshQuantizer", (), {})
    with pytest.raises(ValueError, match="not registered yet.*'ste_sign'"):
        register_quantizer("ste_sign")(fresh)
    impostor = type("SteSign", (), {})
    with pytest.raises(ValueError, match="'SteSign', already registered"):
        register_quantizer()(impostor)
    assert "FreshQuantizer" not in q.registered_names()
    assert keras.saving.get_registered_object("quantizeml>FreshQuantizer") is None


def test_serialize_takes_the_documented_initializer_keyword():
    """keras.quantizers.serialize(initializer): the documented argument name."""
    quantizer = q.SteSign(clip_value=0.5)
    assert q.serialize(initializer=quantizer) == q.serialize(quantizer)
    assert q.serialize(initializer=None) is None
    assert q.deserialize(q.serialize(initializer=q.ste_sign)) is q.ste_sign
    with pytest.raises(TypeError, match="Received: initializer="):
        q.serialize(initializer=object())


def test_larq_names_are_keras_custom_objects():
    """tf_keras' lookups (activations, legacy h5 loader) find the Larq string ids."""
    custom = keras.utils.get_custom_objects()
    for name in ("ste_sign", "approx_sign", "ste_heaviside", "swish_sign",
                 "magnitude_aware_sign", "ste_tern", "dorefa"):
        assert callable(custom[name]) and custom[name].identifier == name
