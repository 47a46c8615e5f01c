"""Frequency -> weight and temperature maps against plain-Python formulas."""

import math

import pytest
import torch
from oracles import power_map

from tase_loss import FrequencyReference, SampleReweighter, TemperatureMap

FREQUENCY = [0.4, 0.24, 0.14, 0.09, 0.05, 0.03, 0.02, 0.012, 0.008, 0.004]


def test_reweighter_matches_formula_with_batch_reference():
    weight = SampleReweighter(alpha=0.5, max_weight=10.0)(torch.tensor(FREQUENCY, dtype=torch.float64))
    expected = power_map(FREQUENCY, -0.5, 1.0, 0.1, 10.0)
    torch.testing.assert_close(weight, torch.tensor(expected, dtype=torch.float32))


def test_reweighter_clips_and_alpha_zero_is_unit():
    weight = SampleReweighter(alpha=2.0, max_weight=3.0)(torch.tensor(FREQUENCY))
    assert float(weight.max()) == pytest.approx(3.0) and float(weight.min()) == pytest.approx(1 / 3)
    assert torch.equal(SampleReweighter(alpha=0.0)(torch.tensor(FREQUENCY)), torch.ones(10))


def test_power_temperature_matches_formula_and_preserves_log_mean():
    temperature = TemperatureMap(0.2, gamma=0.25, min_temperature=0.01, max_temperature=5.0)(
        torch.tensor(FREQUENCY)
    )
    torch.testing.assert_close(
        temperature, torch.tensor(power_map(FREQUENCY, 0.25, 0.2, 0.01, 5.0), dtype=torch.float32)
    )
    # Unclipped, the geometric mean of the temperatures is the base temperature.
    assert float(temperature.log().mean().exp()) == pytest.approx(0.2, rel=1e-5)
    # Rare samples get the small end.
    assert float(temperature[-1]) < 0.2 < float(temperature[0])


def test_gamma_zero_is_nt_xent_temperature():
    temperature = TemperatureMap(0.2, gamma=0.0)(torch.tensor(FREQUENCY))
    torch.testing.assert_close(temperature, torch.full((10,), 0.2))


def test_range_map_matches_formula():
    temperature_map = TemperatureMap(min_temperature=0.1, max_temperature=0.5, mapping="range")
    temperature = temperature_map(torch.tensor(FREQUENCY, dtype=torch.float64))
    low, high = math.log(min(FREQUENCY)), math.log(max(FREQUENCY))
    expected = [0.1 + 0.4 * (math.log(f) - low) / (high - low) for f in FREQUENCY]
    torch.testing.assert_close(temperature, torch.tensor(expected, dtype=torch.float32))


def test_dataset_reference_replaces_batch_statistics():
    reference = FrequencyReference(log_mean=math.log(0.1), log_min=math.log(0.001), log_max=0.0)
    weight = SampleReweighter(alpha=1.0)(torch.tensor([0.1, 0.05]), reference)
    torch.testing.assert_close(weight, torch.tensor([1.0, 2.0]))
    temperature = TemperatureMap(0.2, gamma=1.0)(torch.tensor([0.1, 0.05]), reference)
    torch.testing.assert_close(temperature, torch.tensor([0.2, 0.1]))
