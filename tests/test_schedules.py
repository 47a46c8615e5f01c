"""The cosine temperature schedule (Kukleva et al., ICLR 2023) alone and with TASE."""

import math

import pytest
import torch

from tase_loss import (
    ClusterSizeEstimator,
    CosineTemperatureSchedule,
    PseudoLabeler,
    TASEContrastiveLoss,
    TemperatureMap,
    nt_xent_loss,
)


def _formula(epoch, t_lo, t_hi, period):
    return t_lo + 0.5 * (t_hi - t_lo) * (1 + math.cos(2 * math.pi * epoch / period))


@pytest.mark.parametrize("t_lo,t_hi,period", [(0.1, 1.0, 400), (0.05, 0.5, 37)])
def test_values_match_the_formula_at_quarter_periods(t_lo, t_hi, period):
    schedule = CosineTemperatureSchedule(t_lo, t_hi, period)
    landmarks = {0: t_hi, period / 4: (t_lo + t_hi) / 2, period / 2: t_lo, period: t_hi}
    for epoch, expected in landmarks.items():
        assert schedule(epoch) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    for epoch in (1, 17.5, 3 * period / 4, 2 * period + 3):
        assert schedule(epoch) == pytest.approx(_formula(epoch, t_lo, t_hi, period), rel=1e-14)


def test_defaults_are_the_papers():
    schedule = CosineTemperatureSchedule()
    assert (schedule.min_temperature, schedule.max_temperature, schedule.period) == (0.1, 1.0, 400.0)


def test_ts_baseline_is_nt_xent_at_the_scheduled_temperature():
    schedule = CosineTemperatureSchedule(0.1, 1.0, period=40)
    criterion = TASEContrastiveLoss(temperature=0.2)
    out0, out1 = torch.randn(8, 5, dtype=torch.float64), torch.randn(8, 5, dtype=torch.float64)
    for epoch in (0, 7, 20, 33):
        schedule.apply(criterion, epoch)
        expected = nt_xent_loss(out0, out1, temperature=_formula(epoch, 0.1, 1.0, 40))
        torch.testing.assert_close(criterion(out0, out1), expected)


def test_schedule_modulates_the_tase_base_temperature():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(60, 4, generator=generator)
    labeler = PseudoLabeler(60, 4, ClusterSizeEstimator(3), warmup_epochs=1, num_threads=1)
    labeler.update(torch.arange(60), features)
    labeler.end_epoch(epoch=0)
    temperature_map = TemperatureMap(base_temperature=0.2, gamma=0.25, min_temperature=0.05)
    criterion = TASEContrastiveLoss(temperature=0.2, pseudo_labeler=labeler, temperature_map=temperature_map)
    schedule = CosineTemperatureSchedule(0.1, 1.0, period=10)
    index = torch.arange(8)
    out0, out1 = torch.randn(8, 4, generator=generator), torch.randn(8, 4, generator=generator)
    for epoch in (0, 2.5, 5):
        value = schedule.apply(criterion, epoch)
        assert criterion.guidance.temperature_map.base_temperature == criterion.temperature == value
        frequency = labeler.frequency(index)
        relative = frequency.double().log() - labeler.frequency_reference().log_mean
        # the explicit lower bound stays; the default upper bound follows the base (5 t)
        expected_temperature = (value * torch.exp(0.25 * relative)).clamp(0.05, 5 * value).float()
        torch.testing.assert_close(
            criterion(out0, out1, index=index),
            nt_xent_loss(out0, out1, temperature=expected_temperature, weight=criterion.guidance.reweighter(
                frequency, labeler.frequency_reference())),
        )
        assert criterion.guidance.temperature_map.max_temperature == pytest.approx(5 * value)
    assert criterion.guidance.temperature_map.min_temperature == 0.05  # the explicit bound stays


def test_a_schedule_outside_an_explicit_clip_range_is_refused():
    labeler = PseudoLabeler(60, 4, ClusterSizeEstimator(3), warmup_epochs=1)
    temperature_map = TemperatureMap(0.2, min_temperature=0.05, max_temperature=1.0)
    criterion = TASEContrastiveLoss(temperature=0.2, pseudo_labeler=labeler, temperature_map=temperature_map)
    refused = "base temperature 0.01 is below the map's explicit min_temperature 0.05"
    with pytest.raises(ValueError, match=refused):
        CosineTemperatureSchedule(0.01, 1.0).apply(criterion, 200)  # t = 0.01 at half a period
    assert criterion.temperature == 0.2 and criterion.guidance.temperature_map.base_temperature == 0.2
    with pytest.raises(ValueError, match="base temperature 2 is above the map's explicit max_temperature 1"):
        CosineTemperatureSchedule(0.1, 2.0).apply(criterion, 0)


@pytest.mark.parametrize("temperature", [0.5, 0.1, 3000.0])
def test_a_default_clip_range_follows_the_scheduled_base_temperature(temperature):
    # the map's default range was fixed at construction: t = 0.5 then a schedule down to 0.1
    # failed mid-run (0.125 > 0.1), and t = 3000 failed at once (5 t > 1e4)
    labeler = PseudoLabeler(60, 4, ClusterSizeEstimator(3), warmup_epochs=1)
    criterion = TASEContrastiveLoss(temperature=temperature, pseudo_labeler=labeler)
    schedule = CosineTemperatureSchedule(0.1, 1.0, period=10)
    for epoch in (0, 2.5, 5):
        value = schedule.apply(criterion, epoch)
        bounds = criterion.guidance.temperature_map.min_temperature, criterion.guidance.temperature_map.max_temperature
        assert bounds == pytest.approx((value / 4, 5 * value))
    huge = TASEContrastiveLoss(temperature=3000.0, pseudo_labeler=labeler).guidance.temperature_map
    assert (huge.min_temperature, huge.max_temperature) == (750.0, 1e4)  # 5 t stops at the range's end


def test_invalid_arguments_name_themselves():
    with pytest.raises(ValueError, match="min_temperature"):
        CosineTemperatureSchedule(min_temperature=0.0)
    with pytest.raises(ValueError, match="max_temperature"):
        CosineTemperatureSchedule(max_temperature=float("inf"))
    with pytest.raises(ValueError, match="period"):
        CosineTemperatureSchedule(period=0)
    with pytest.raises(ValueError, match="must not exceed"):
        CosineTemperatureSchedule(min_temperature=0.5, max_temperature=0.2)
    with pytest.raises(ValueError, match="epoch"):
        CosineTemperatureSchedule()(-1)
    with pytest.raises(TypeError, match="target"):
        CosineTemperatureSchedule().apply(object(), 0)
