"""FlipRatio: the documented example and the definition on random updates."""
import numpy as np
import pytest

from quantizeml.quantizers import FlipRatio


def test_documented_example():
    m = FlipRatio()
    m.update_state((1, 1))
    assert m.result().numpy() == pytest.approx(0)
    m.update_state((2, 2))
    assert m.result().numpy() == pytest.approx(1)
    m.update_state((1, 2))
    assert m.result().numpy() == pytest.approx(0.75)


def test_mean_of_flip_ratios_and_reset():
    rng = np.random.default_rng(0)
    updates = [np.sign(rng.normal(size=(4, 5))) for _ in range(6)]
    m = FlipRatio()
    for u in updates:
        m.update_state(u)
    ratios = [np.mean(a != b) for a, b in zip(updates[:-1], updates[1:])]
    assert m.result().numpy() == pytest.approx(np.mean(ratios), rel=1e-6)
    m.reset_state()
    assert m.result().numpy() == 0
    m.update_state(-updates[-1])  # first update after a reset only records values
    m.update_state(updates[-1])
    assert m.result().numpy() == pytest.approx(1.0)


def test_config():
    m = FlipRatio(values_dtype="int16", name="fr")
    config = m.get_config()
    assert config["values_dtype"] == "int16" and config["name"] == "fr"
    assert FlipRatio.from_config(config).values_dtype.name == "int16"
