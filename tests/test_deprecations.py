"""0.1's names answer: each works with a DeprecationWarning or fails naming its replacement."""

import importlib
import re

import pytest
import torch

import tase_loss
from tase_loss import (
    ClusterSizeEstimator,
    CosineTemperatureSchedule,
    PseudoLabeler,
    TASEContrastiveLoss,
)
from tase_loss.experiments import cli
from tase_loss.experiments.arguments import build_parser
from tase_loss.ood import DomainHead, TwoStageOOD, train_two_stage

WARMUP_NOTE = "warmup_epochs=W now means W epochs of plain NT-Xent"


def _labeler(**options):
    return PseudoLabeler(num_samples=60, feature_dim=4, estimator=ClusterSizeEstimator(num_clusters=3), **options)


def _fill(labeler):
    generator = torch.Generator().manual_seed(0)
    labeler.update(torch.arange(60), torch.randn(60, 4, generator=generator))


# --- removed without a faithful alias: the error names the replacement -------------------


@pytest.mark.parametrize(
    "statement",
    [
        "from tase_loss import KNNDensityWeights",
        "import tase_loss; tase_loss.KNNDensityWeights",
        "import tase_loss.density",
        "from tase_loss import density",
        "from tase_loss.density import KNNDensityWeights",
    ],
)
def test_knn_density_weights_and_density_module_name_the_replacement(statement):
    with pytest.raises(ImportError) as caught:
        exec(statement, {})
    message = str(caught.value)
    assert "removed in 0.2.0" in message
    assert 'FrequencyWeights(PseudoLabeler(' in message
    assert 'KNNDensityEstimator(kernel="exponential"' in message


def test_the_replacement_named_for_knn_density_weights_runs():
    # The message's call, copied as written, builds and answers.
    labeler = PseudoLabeler(
        60, 4, estimator=tase_loss.KNNDensityEstimator(kernel="exponential", smoothing_rounds=0), warmup_epochs=1
    )
    weights = tase_loss.FrequencyWeights(labeler)
    _fill(labeler)
    assert labeler.end_epoch(0)
    values = weights(torch.arange(60))
    assert values.shape == (60,) and torch.isclose(values.mean(), torch.tensor(1.0))


def test_other_missing_names_stay_plain_attribute_errors():
    assert not hasattr(tase_loss, "no_such_name")
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("tase_loss.no_such_module")


def test_num_clusters_on_the_labeler_names_the_estimator_to_pass():
    with pytest.raises(TypeError) as caught:
        PseudoLabeler(num_samples=60, feature_dim=4, num_clusters=7)
    message = str(caught.value)
    assert "estimator=ClusterSizeEstimator(num_clusters=7)" in message
    assert WARMUP_NOTE in message


def test_num_clusters_given_positionally_as_in_0_1_names_the_estimator_to_pass():
    with pytest.raises(TypeError, match=r"pass estimator=ClusterSizeEstimator\(num_clusters=10\)"):
        PseudoLabeler(60, 4, 10)
    assert PseudoLabeler(60, 4, "cluster-size").estimator.num_clusters == (10,)


def test_an_unknown_keyword_is_still_a_plain_type_error():
    with pytest.raises(TypeError, match="unexpected keyword argument 'no_such_option'"):
        PseudoLabeler(num_samples=60, feature_dim=4, no_such_option=1)


# --- renamed: the old name works, warns, and behaves as the new one ------------------------


def test_recluster_every_is_estimate_every_and_warns_about_the_warm_up():
    with pytest.warns(DeprecationWarning, match=r"recluster_every=\) was renamed estimate_every=") as record:
        old = _labeler(warmup_epochs=1, recluster_every=2)
    assert WARMUP_NOTE in str(record[0].message)
    new = _labeler(warmup_epochs=1, estimate_every=2)
    assert old.estimate_every == 2
    assert [old.should_estimate(epoch) for epoch in range(6)] == [new.should_estimate(epoch) for epoch in range(6)]


def test_old_and_new_keyword_together_is_an_error():
    with pytest.raises(TypeError, match="both recluster_every= and estimate_every="):
        _labeler(recluster_every=2, estimate_every=3)


def test_maybe_recluster_is_end_epoch_and_says_the_warm_up_changed():
    old, new = _labeler(warmup_epochs=2), _labeler(warmup_epochs=2)
    _fill(old)
    _fill(new)
    answers = []
    for epoch in range(3):
        with pytest.warns(DeprecationWarning, match=re.escape("maybe_recluster() was renamed end_epoch()")) as record:
            answers.append(old.maybe_recluster(epoch))
        assert WARMUP_NOTE in str(record[0].message)
    assert answers == [new.end_epoch(epoch) for epoch in range(3)] == [False, True, True]
    assert torch.equal(old.log_frequency, new.log_frequency)


def test_recluster_is_estimate_and_num_fits_is_num_estimates():
    old, new = _labeler(), _labeler()
    _fill(old)
    _fill(new)
    with pytest.warns(DeprecationWarning, match=re.escape("recluster() was renamed estimate()")):
        old.recluster()
    new.estimate()
    assert torch.equal(old.log_frequency, new.log_frequency)
    with pytest.warns(DeprecationWarning, match="num_fits was renamed num_estimates"):
        assert old.num_fits == new.num_estimates == 1


def test_embedding_dim_on_the_loss_is_feature_dim():
    with pytest.warns(DeprecationWarning, match=r"TASEContrastiveLoss\(embedding_dim=\) was renamed feature_dim="):
        old = TASEContrastiveLoss(queue_size=8, embedding_dim=5)
    new = TASEContrastiveLoss(queue_size=8, feature_dim=5)
    assert old.queue.keys.shape == new.queue.keys.shape == (8, 5)


def test_embedding_dim_on_the_ood_recipe_is_feature_dim():
    with pytest.warns(DeprecationWarning, match=r"DomainHead\(embedding_dim=\) was renamed feature_dim="):
        head = DomainHead(embedding_dim=6)
    assert head.layers[0].in_features == DomainHead(feature_dim=6).layers[0].in_features == 6
    with pytest.warns(DeprecationWarning, match=r"TwoStageOOD\(embedding_dim=\) was renamed feature_dim="):
        method = TwoStageOOD(torch.randn(8, 6), num_id=10, embedding_dim=4, augment=lambda x: x)
    assert method.domain_head.layers[0].in_features == 4
    with pytest.raises(TypeError, match="train_two_stage\\(\\) got both embedding_dim= and feature_dim="):
        train_two_stage(None, None, None, None, embedding_dim=4, feature_dim=4)


def test_t_lo_and_t_hi_are_min_and_max_temperature():
    with pytest.warns(DeprecationWarning) as record:
        old = CosineTemperatureSchedule(t_lo=0.2, t_hi=0.8, period=10)
    assert sorted(str(warning.message).split(" in 0.2.0")[0] for warning in record) == [
        "CosineTemperatureSchedule(t_hi=) was renamed max_temperature=",
        "CosineTemperatureSchedule(t_lo=) was renamed min_temperature=",
    ]
    new = CosineTemperatureSchedule(min_temperature=0.2, max_temperature=0.8, period=10)
    assert [old(epoch) for epoch in (0, 2.5, 5)] == [new(epoch) for epoch in (0, 2.5, 5)]
    with pytest.warns(DeprecationWarning, match="t_lo was renamed min_temperature"):
        assert old.t_lo == 0.2
    with pytest.warns(DeprecationWarning, match="t_hi was renamed max_temperature"):
        assert old.t_hi == 0.8


def test_the_warning_points_at_the_callers_line():
    with pytest.warns(DeprecationWarning) as record:
        CosineTemperatureSchedule(t_lo=0.2)
    assert record[0].filename == __file__


# --- the runner's command line -----------------------------------------------------------


def test_losses_option_is_methods_with_a_warning(capsys):
    parser = build_parser()
    old = parser.parse_args(["--losses", "ntxent,tase"])
    assert "--losses was renamed --methods" in capsys.readouterr().err
    assert old.methods == parser.parse_args(["--methods", "ntxent,tase"]).methods == "ntxent,tase"
    assert parser.parse_args([]).methods is None
    assert "--losses" not in parser.format_help()


def test_list_losses_lists_the_methods(capsys):
    assert cli.main(["--list-methods"]) == 0
    listed = capsys.readouterr().out
    assert cli.main(["--list-losses"]) == 0
    captured = capsys.readouterr()
    assert captured.out == listed
    assert "--list-losses was renamed --list-methods" in captured.err


def test_suite_children_do_not_get_the_old_option_twice():
    kept = cli._child_arguments(["--losses", "ntxent", "--ratio", "5", "--losses=tase"], build_parser(), [])
    assert kept == ["--ratio", "5"]
