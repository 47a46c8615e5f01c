"""Tests of the experiment runner: CLI errors, data, evaluation, resume, recipes, end to end."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tase_loss.experiments import cli
from tase_loss.experiments.data import DataError, group_classes, load_npz, long_tailed_counts
from tase_loss.experiments.encoders import build_model
from tase_loss.experiments.evaluation import (
    frequency_quality,
    group_accuracies,
    knn_predict,
    linear_probe,
    per_class_accuracy,
)
from tase_loss.experiments.methods import METHODS, MethodContext, MethodSettings, build_method
from tase_loss.experiments.methods.contrastive import MoCoSettings, TASESettings
from tase_loss.experiments.training import TrainingConfig, to_device_images, train

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_npz(path, num_train=24, num_test=12, size=8, num_classes=3, **overrides):
    generator = np.random.default_rng(0)
    arrays = {
        "x": generator.integers(0, 256, (num_train, size, size, 3), dtype=np.uint8),
        "y": np.arange(num_train) % num_classes,
        "x_test": generator.integers(0, 256, (num_test, size, size, 3), dtype=np.uint8),
        "y_test": np.arange(num_test) % num_classes,
    }
    arrays.update(overrides)
    np.savez(path, **arrays)
    return str(path)


# --- command line: bad input gives one line and exit code 2 -------------------------------


def _run_main(capsys, arguments):
    code = cli.main(arguments)
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


@pytest.mark.parametrize(
    "arguments, fragment",
    [
        (["--data", "/no/such/file.npz"], "no such file or folder"),
        (["--methods", "ntxent,not-a-method"], "unknown method not-a-method"),
        (["--ratio", "0"], "argument --ratio: must be a finite number >= 1 and <= 130, got '0'"),
        (["--ratio", "-1"], "argument --ratio"),
        (["--ratio", "nan"], "argument --ratio"),
        (["--ratio", "inf"], "argument --ratio"),
        (["--temperature", "0"], "argument --temperature"),
        (["--momentum", "1"], "argument --momentum"),
        (["--temperature", "0.02", "--min-temperature", "0.05"], "min_temperature"),
        (["--estimator", "k-means"], "argument --estimator: invalid choice"),
        (["--resume-anyway"], "--resume-anyway needs --resume"),
        (["--epochs", "0"], "--epochs"),
        (["--seeds", "a,b"], "comma-separated integers"),
        (["--seeds", "1,1"], "argument --seeds: seeds must be distinct"),  # paired with itself
        (["--seeds", "-1"], "argument --seeds: seeds must lie in [0, 2147418112], got [-1]"),
        (["--seeds", "0,3000000000"], "argument --seeds: seeds must lie in"),
        (["--encoder", "vgg"], "unknown encoder"),
        (
            ["--device", "cuda:7"] if not torch.cuda.is_available() else ["--encoder", "vgg"],
            "not available" if not torch.cuda.is_available() else "unknown encoder",
        ),
    ],
)
def test_cli_bad_arguments_one_line(capsys, arguments, fragment):
    code, lines = _run_main(capsys, arguments)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("tase-experiment: error:"), lines
    assert fragment in lines[0]


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"x": np.zeros((24, 8, 8, 5), np.uint8)}, "x must have shape"),
        ({"y": np.arange(23) % 3}, "y must have shape (24,)"),
        ({"y_test": np.full(12, 7)}, "y_test must lie in [0, 3)"),
        ({"y": -(np.arange(24) % 3)}, "y must lie in"),
        ({"x_test": np.zeros((12, 16, 16, 3), np.uint8)}, "x_test images have shape"),
        ({"y": np.linspace(0, 2, 24)}, "integer labels"),
    ],
)
def test_cli_bad_arrays_one_line(capsys, tmp_path, overrides, fragment):
    path = _write_npz(tmp_path / "bad.npz", **overrides)
    code, lines = _run_main(capsys, ["--data", path])
    assert code == 2
    assert len(lines) == 1 and fragment in lines[0], lines


@pytest.mark.parametrize("content", ["[1, 2]", "{}", '"text"', '{"runs": []}', '{"partial": false, "runs": []}'])
def test_cli_merge_of_a_json_that_is_no_results_file_is_one_line(capsys, tmp_path, content):
    path = tmp_path / "other.json"
    path.write_text(content)
    code, lines = _run_main(capsys, ["--merge", str(path), "--output", str(tmp_path / "merged")])
    assert code == 2 and len(lines) == 1 and "other.json is not a results JSON of tase-experiment" in lines[0], lines


def test_cli_merge_of_an_unfinished_results_file_names_it(capsys, tmp_path):
    path = tmp_path / "running.json"
    path.write_text('{"command": "tase-experiment", "partial": true, "runs": []}')
    code, lines = _run_main(capsys, ["--merge", str(path), "--output", str(tmp_path / "merged")])
    assert code == 2 and len(lines) == 1 and "running.json is an unfinished results file" in lines[0], lines


def test_cli_missing_array_and_probe(capsys, tmp_path):
    path = str(tmp_path / "partial.npz")
    np.savez(path, x=np.zeros((4, 8, 8, 3), np.uint8))
    code, lines = _run_main(capsys, ["--data", path])
    assert code == 2 and len(lines) == 1 and "lacks the array(s)" in lines[0]
    good = _write_npz(tmp_path / "good.npz")
    code, lines = _run_main(capsys, ["--data", good, "--probe", str(tmp_path / "none.npz")])
    assert code == 2 and len(lines) == 1 and "no such file" in lines[0]


def test_module_entry_point_error_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tase_loss.experiments", "--methods", "nope"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": REPOSITORY},
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"tase-experiment: error: unknown method nope; choose from {', '.join(sorted(METHODS))}"
    ]


def test_core_import_does_not_load_optional_dependencies():
    code = (
        "import sys, tase_loss; "
        "print(sorted(m for m in ('sklearn', 'matplotlib', 'kornia', 'tase_loss.experiments') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": REPOSITORY},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_list_methods(capsys):
    assert cli.main(["--list-methods"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == sorted(METHODS)
    assert {"ntxent", "tase", "tase-temperature", "tase-reweight", "tase-oracle", "moco-tase", "byol-tase"} <= set(
        listed
    )


# --- data -------------------------------------------------------------------------------------


def test_npz_loader_converts_and_groups(tmp_path):
    counts = [6, 4, 2]
    labels = np.repeat(np.arange(3), counts)
    path = _write_npz(tmp_path / "lt.npz", num_train=12, y=labels)
    data = load_npz(path)
    assert data.x_train.shape == (12, 3, 8, 8) and data.x_train.dtype == np.float32
    raw = np.load(path)["x"]
    np.testing.assert_allclose(data.x_train[5, :, 2, 3], raw[5, 2, 3, :] / 255.0, rtol=0, atol=1e-7)
    assert data.class_counts.tolist() == counts
    assert data.groups == {"many": [0], "medium": [1], "few": [2]}
    assert data.x_probe is data.x_train and "no probe file" in data.probe_note


def test_npz_probe_file(tmp_path):
    path = _write_npz(tmp_path / "lt.npz")
    probe = str(tmp_path / "probe.npz")
    np.savez(probe, x=np.zeros((6, 8, 8, 3), np.uint8), y=np.array([0, 0, 1, 1, 2, 2]))
    data = load_npz(path, probe)
    assert data.x_probe.shape == (6, 3, 8, 8) and data.y_probe.tolist() == [0, 0, 1, 1, 2, 2]
    np.savez(probe, x=np.zeros((6, 8, 8, 3), np.uint8), y=np.array([0, 0, 1, 1, 2, 3]))
    with pytest.raises(DataError, match=r"probe y must lie in \[0, 3\)"):
        load_npz(path, probe)


def test_image_folder_loader(tmp_path):
    from PIL import Image

    from tase_loss.experiments.data import load_image_folder

    counts = {"cat": 3, "dog": 2, "eel": 1}
    for split, per_class in (("train", counts), ("test", {"cat": 1, "dog": 1, "eel": 1})):
        for class_name, count in per_class.items():
            folder = tmp_path / split / class_name
            folder.mkdir(parents=True)
            for index in range(count):
                value = 10 * index + len(class_name)
                Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(folder / f"{index}.png")
    data = load_image_folder(str(tmp_path))
    assert data.class_counts.tolist() == [3, 2, 1] and data.y_test.tolist() == [0, 1, 2]
    assert data.x_train.shape == (6, 3, 4, 4)
    assert data.x_train[1, 0, 0, 0] == pytest.approx(13 / 255)
    with pytest.raises(DataError, match="image folder layout"):
        load_image_folder(str(tmp_path / "train"))


def test_long_tailed_profile_and_cifar_groups():
    assert long_tailed_counts(5000, 10, 100.0) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    groups = group_classes(np.array(long_tailed_counts(5000, 10, 100.0)))
    assert groups == {"many": [0, 1, 2], "medium": [3, 4, 5], "few": [6, 7, 8, 9]}


# --- evaluation against hand-computed values ----------------------------------------------------


def test_per_class_and_group_accuracies_by_hand():
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 2])
    predictions = np.array([0, 1, 1, 1, 2, 0, 0, 1])
    per_class = per_class_accuracy(predictions, labels, 3)
    np.testing.assert_allclose(per_class, [0.5, 1.0, 0.25])
    result = group_accuracies(per_class, {"many": [1], "medium": [0], "few": [2]})
    mean = (0.5 + 1.0 + 0.25) / 3
    expected_std = np.sqrt(((1.0 - mean) ** 2 + (0.5 - mean) ** 2 + (0.25 - mean) ** 2) / 3)
    assert result["many"] == 1.0 and result["medium"] == 0.5 and result["few"] == 0.25
    assert result["all"] == pytest.approx(mean) and result["std"] == pytest.approx(expected_std)


def test_knn_vote_by_hand():
    memory = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
    labels = np.array([0, 1, 1, 0])
    # query (1, 0): similarities 1.0 (label 0), 0.8 (1), 0.0 (1), 0.6 (0). k=3 -> 0: 1.6, 1: 0.8.
    # query (0, 1): similarities 0.0, 0.6 (1), 1.0 (1), 0.8 (0). k=3 -> 1: 1.6, 0: 0.8.
    # query (0.6, 0.8), k=2: 0.6*0.8+0.8*0.6 = 0.96 (1), 1.0 (0) -> 0 wins by 1.0 vs 0.96.
    queries = np.array([[2.0, 0.0], [0.0, 3.0], [0.6, 0.8]])
    assert knn_predict(memory, labels, queries[:2], 2, k=3).tolist() == [0, 1]
    assert knn_predict(memory, labels, queries[2:], 2, k=2).tolist() == [0]


def test_linear_probe_is_deterministic_and_separates():
    generator = np.random.default_rng(0)
    centers = np.array([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0]])
    labels = np.repeat(np.arange(3), 20)
    features = centers[labels] + 0.3 * generator.standard_normal((60, 3))
    first = linear_probe(features, labels, features)
    assert (first == labels).all()
    assert (linear_probe(features, labels, features) == first).all()


def test_frequency_quality_perfect_flat_and_scaled():
    labels = np.repeat(np.arange(3), [6, 3, 1])
    truth = np.log(np.bincount(labels)[labels] / labels.size)
    groups = {"many": [0], "medium": [1], "few": [2]}
    perfect = frequency_quality(truth, labels, groups, labels + 5)
    assert perfect["nmi"] == pytest.approx(1.0) and perfect["spearman"] == pytest.approx(1.0)
    assert perfect["gap_recovered"] == pytest.approx(1.0)
    assert perfect["few_over_many"] == pytest.approx(0.1 / 0.6)
    half = frequency_quality(0.5 * truth, labels, groups)
    assert half["gap_recovered"] == pytest.approx(0.5) and half["spearman"] == pytest.approx(1.0)
    assert half["nmi"] is None
    flat = frequency_quality(np.zeros(10), labels, groups, np.zeros(10, int))
    assert flat["nmi"] == pytest.approx(0.0) and flat["few_over_many"] == pytest.approx(1.0)
    assert flat["spearman"] is None and flat["gap_recovered"] == pytest.approx(0.0)
    assert perfect["class_spearman"] == pytest.approx(1.0) and perfect["floor"] == pytest.approx(0.0)
    assert flat["class_spearman"] is None
    # the rarest sample estimated 2 nats rarer than its class; the mean moves by 0.2
    collapsed = truth.copy()
    collapsed[-1] -= 2.0
    assert frequency_quality(collapsed, labels, groups)["floor"] == pytest.approx(-2.0 + 0.2)
    # class means ordered against the sizes, hand-checked
    reversed_classes = np.log(np.array([1.0, 3.0, 6.0]))[labels]
    assert frequency_quality(reversed_classes, labels, groups)["class_spearman"] == pytest.approx(-1.0)


def test_images_live_on_the_device_as_uint8_when_exact():
    pixels = np.arange(12, dtype=np.uint8).reshape(1, 1, 3, 4)
    assert to_device_images(pixels / 255.0, torch.device("cpu")).dtype == torch.uint8
    assert torch.equal(to_device_images(pixels / 255.0, torch.device("cpu")), torch.from_numpy(pixels))
    assert to_device_images(np.full((1, 1, 2, 2), 0.3, np.float32), torch.device("cpu")).dtype == torch.float32


def test_test_split_without_a_class_is_a_clear_error(tmp_path):
    path = _write_npz(tmp_path / "lt.npz", y_test=np.arange(12) % 2)
    with pytest.raises(DataError, match=r"the test split has no image of classes \[2\]"):
        load_npz(path)


# --- training: checkpoint/resume equals an uninterrupted run -----------------------------------


def _settings(**tase):
    return MethodSettings(
        tase=TASESettings(**{"num_clusters": (4,), "warmup_epochs": 1, **tase}), moco=MoCoSettings(queue_size=64)
    )


def _train_tiny(method_name, tmp_path, name, stop_after=None, epochs=3, settings=None):
    torch.manual_seed(0)
    images = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    model = build_model("digits-cnn", 1, projection_dim=16)
    method = build_method(method_name, MethodContext(40, 0, torch.device("cpu"), settings or _settings()), model)
    from tase_loss.experiments.augmentations import simclr_augmentation

    config = TrainingConfig(
        epochs=epochs,
        batch_size=16,
        checkpoint_path=str(tmp_path / f"{name}.pt"),
        stop_after_epochs=stop_after,
        progress=False,
        settings={"method": method_name},
    )
    history = train(model, method, images, simclr_augmentation(8, 1), config)
    return model, method, history, config


@pytest.mark.parametrize("method_name", ["tase", "moco-tase", "byol-tase"])
def test_resume_matches_uninterrupted_run(tmp_path, method_name):
    full_model, full_method, full_history, _ = _train_tiny(method_name, tmp_path, "full")
    _train_tiny(method_name, tmp_path, "split", stop_after=1)
    # a fresh process would build new objects from scratch: do the same here
    resumed_model, resumed_method, resumed_history, _ = _train_tiny(method_name, tmp_path, "split")
    assert len(resumed_history) == len(full_history) == 3
    assert [record["loss"] for record in resumed_history] == [record["loss"] for record in full_history]
    for (name, value), (_, other) in zip(full_model.state_dict().items(), resumed_model.state_dict().items()):
        assert torch.equal(value, other), name
    full_state, resumed_state = full_method.checkpoint_state(), resumed_method.checkpoint_state()
    for name, value in full_state["module"].items():
        if name.endswith("last_diagnostics.seconds"):  # the estimate's wall time, not state
            continue
        assert torch.equal(value, resumed_state["module"][name]), name
    assert full_state["module"].keys() == resumed_state["module"].keys()
    assert torch.equal(full_method.labeler.log_frequency, resumed_method.labeler.log_frequency)
    assert full_method.labeler.num_estimates == resumed_method.labeler.num_estimates == 3


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    from tase_loss.experiments.training import CheckpointError

    _train_tiny("tase", tmp_path, "run", stop_after=1)
    with pytest.raises(CheckpointError, match=r"other settings \(method: 'tase' -> 'ntxent'\)"):
        _train_tiny("ntxent", tmp_path, "run")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"cannot resume from .*broken\.pt"):
        _train_tiny("tase", tmp_path, "broken")


def test_checkpoints_load_with_weights_only(tmp_path):
    _, _, _, config = _train_tiny("moco-tase", tmp_path, "safe", epochs=2)
    state = torch.load(config.checkpoint_path, weights_only=True)
    assert state["epoch"] == 2 and state["settings"] == {"method": "moco-tase"}


def test_tase_method_reports_sample_statistics(tmp_path):
    _, method, history, _ = _train_tiny("tase", tmp_path, "stats", epochs=2)
    statistics = method.sample_statistics()
    assert set(statistics) == {"frequency", "temperature", "weight"}
    assert statistics["temperature"].shape == (40,)
    assert "estimated" in history[0] and history[0]["seconds"] > 0
    _, plain, _, _ = _train_tiny("ntxent", tmp_path, "plain", epochs=1)
    assert plain.sample_statistics() == {}


def test_ablation_methods_switch_one_mechanism_off():
    model = build_model("digits-cnn", 1, projection_dim=16)
    context = MethodContext(40, 0, torch.device("cpu"), _settings())
    temperature_only = build_method("tase-temperature", context, model).guidance
    weight_only = build_method("tase-reweight", context, model).guidance
    frequency = torch.tensor([0.5, 0.05])
    assert temperature_only.reweighter(frequency).tolist() == [1.0, 1.0]
    assert weight_only.temperature_map(frequency).tolist() == pytest.approx([0.2, 0.2])
    assert temperature_only.temperature_map(frequency)[1] < temperature_only.temperature_map(frequency)[0]


def test_oracle_method_uses_true_class_frequencies():
    model = build_model("digits-cnn", 1, projection_dim=16)
    labels = np.array([0] * 6 + [1] * 3 + [2])
    settings = _settings(num_clusters=(2,), warmup_epochs=2)
    method = build_method(
        "tase-oracle", MethodContext(10, 0, torch.device("cpu"), settings, train_labels=labels), model
    )
    assert method.on_epoch_end(0) == {} and method.sample_statistics() == {}
    assert method.on_epoch_end(1) == {"estimated": 1.0} and method.labeler.last_diagnostics == {}
    statistics = method.sample_statistics()
    np.testing.assert_allclose(statistics["frequency"], [0.6] * 6 + [0.3] * 3 + [0.1], rtol=1e-6)
    assert statistics["weight"][-1] > statistics["weight"][0]
    assert statistics["temperature"][-1] < statistics["temperature"][0]
    with pytest.raises(ValueError, match="true training labels"):
        build_method("tase-oracle", MethodContext(10, 0, torch.device("cpu"), settings), model)


def test_a_fixed_estimate_returned_as_a_tuple_still_works_with_a_deprecation_warning():
    labels = torch.tensor([0] * 6 + [1] * 3 + [2])
    model = build_model("digits-cnn", 1, projection_dim=16)
    context = MethodContext(10, 0, torch.device("cpu"), _settings(warmup_epochs=2), train_labels=labels.numpy())
    method = build_method("tase-oracle", context, model)
    modern = method.fixed_estimate()
    method.fixed_estimate = lambda: (modern.log_frequency, modern.labels)  # a subclass written before the change
    with pytest.warns(DeprecationWarning, match="return a FrequencyEstimate"):
        assert method.on_epoch_end(1) == {"estimated": 1.0}
    np.testing.assert_allclose(method.sample_statistics()["frequency"], [0.6] * 6 + [0.3] * 3 + [0.1], rtol=1e-6)


def test_input_density_method_estimates_once_from_the_raw_images():
    generator = torch.Generator().manual_seed(0)
    base = torch.rand(1, 1, 8, 8, generator=generator)
    head = base + 0.02 * torch.randn(50, 1, 8, 8, generator=generator)  # 50 near-copies of one image
    tail = torch.rand(10, 1, 8, 8, generator=generator)  # 10 unrelated images
    images = torch.cat([head, tail]).numpy()
    model = build_model("digits-cnn", 1, projection_dim=16)
    settings = _settings(warmup_epochs=2)
    context = MethodContext(60, 3, torch.device("cpu"), settings, train_images=images)
    method = build_method("tase-input", context, model)
    assert method.on_epoch_end(0) == {} and method.sample_statistics() == {}
    assert method.on_epoch_end(1) == {"estimated": 1.0}
    assert method.on_epoch_end(2) == {}  # fixed: never re-estimated
    frequency = method.sample_statistics()["frequency"]
    unit = torch.nn.functional.normalize(torch.from_numpy(images).reshape(60, -1), dim=1)
    expected = settings.tase.build_estimator().estimate(unit, seed=3)  # the run's estimator
    np.testing.assert_allclose(frequency, expected.log_frequency.exp().numpy(), rtol=1e-6)
    # the estimate's own diagnostics are the labeler's, as after a re-estimate (the runner records them)
    diagnostics = dict(method.labeler.last_diagnostics)
    assert diagnostics.pop("seconds") > 0 and "trust" in diagnostics
    assert diagnostics == {name: value for name, value in expected.diagnostics.items() if name != "seconds"}
    # every near-copy of the one image is estimated more frequent than every unrelated image
    assert frequency[:50].min() > 3 * frequency[50:].max()
    with pytest.raises(ValueError, match="training images"):
        build_method("tase-input", MethodContext(60, 0, torch.device("cpu"), settings), model)
    losses = MethodContext(60, 0, torch.device("cpu"), _settings(estimator="momentum-loss"), train_images=images)
    with pytest.raises(ValueError, match="estimator of features"):
        build_method("tase-input", losses, model)
    images[7] = 0.0  # an all-black image: refused when built, not after the warm-up
    blank = MethodContext(60, 0, torch.device("cpu"), settings, train_images=images)
    with pytest.raises(ValueError, match=r"cannot place all-zero training images, e\.g\. index 7"):
        build_method("tase-input", blank, model)


def _part(method, accuracies, seeds=None):
    dataset = {"name": "toy", "class_counts": [2, 1, 1]}
    runs = [
        {"method": method, "seed": seed, "linear": {"all": value}, "knn": {"all": value}}
        for seed, value in zip(seeds or range(len(accuracies)), accuracies)
    ]
    return {"dataset": dataset, "config": {}, "runs": runs}


def test_merge_results_resummarizes_and_refuses_partial():
    from tase_loss.experiments.runner import merge_results

    merged = merge_results([_part("ntxent", [0.5, 0.7]), _part("tase", [0.6])])
    assert list(merged["summary"]) == ["ntxent", "tase"]
    assert merged["summary"]["ntxent"]["all"]["mean"] == pytest.approx(0.6)
    assert merged["summary"]["ntxent"]["all"]["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    with pytest.raises(ValueError, match="unfinished"):
        merge_results([{"partial": True, "runs": []}])
    with pytest.raises(ValueError, match="different datasets"):
        merge_results([_part("ntxent", [0.5]), {**_part("tase", [0.6]), "dataset": {"name": "other"}}])


def test_merge_results_extends_an_earlier_merge_one_entry_per_job():
    from tase_loss.experiments.runner import merge_results

    first = merge_results([{**_part("ntxent", [0.5]), "command": "a"}, {**_part("tase", [0.6]), "command": "b"}])
    first = {**first, "command": "parent", "wall_seconds": 9.0}  # as a --parallel parent writes it
    later = {**_part("ntxent", [0.7], seeds=[1]), "command": "c", "wall_seconds": 3.0}
    merged = merge_results([first, later])
    assert merged["commands"] == ["a", "b", "c"]
    assert merged["job_seconds"] == [None, None, 3.0]
    assert merged["config"] == [{}, {}, {}]
    assert merged["summary"]["ntxent"]["all"]["n"] == 2
    assert merged["summary"]["ntxent"]["all"]["mean"] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="'ntxent' seed 0 appears twice"):
        merge_results([first, _part("ntxent", [0.9])])
    older = {key: value for key, value in first.items() if key != "job_seconds"}
    with pytest.raises(ValueError, match="no 'job_seconds' list"):
        merge_results([older, _part("tase", [0.9], seeds=[1])])


def test_table_states_the_share_of_the_oracle_gain_on_shared_seeds():
    from tase_loss.experiments.reporting import format_table
    from tase_loss.experiments.runner import merge_results

    def part(method, few, all_):
        runs = [
            {
                "method": method,
                "seed": seed,
                "linear": {"many": a, "medium": a, "few": f, "all": a, "std": 0.0},
                "knn": {"all": a},
            }
            for seed, (f, a) in enumerate(zip(few, all_))
        ]
        return {"dataset": {"name": "toy"}, "config": {}, "runs": runs}

    merged = merge_results(
        [
            part("ntxent", [0.40, 0.50, 0.60], [0.5, 0.5, 0.5]),
            part("tase-oracle", [0.44, 0.52, 0.60], [0.4, 0.5, 0.5]),  # Few +4, +2, 0; All -10, 0, 0
            part("tase", [0.41, 0.52], [0.5, 0.6]),  # seeds 0, 1 only: Few +1, +2
        ]
    )
    lines = format_table(merged["summary"], merged["differences"]).splitlines()
    shares = [line for line in lines if "share of" in line]
    # Seeds 0 and 1: oracle gains +4 and +2 points (mean +3 > std 1.4), tase +1 and +2
    # (mean +1.5); the oracle's All gain (-10, 0) is not above its spread: no All share.
    assert shares == [
        "tase: share of tase-oracle's gain over ntxent (2 paired seeds): Few 50 % of +3.0, "
        "All none: the oracle's -5.0 ± 7.1 is inside the spread"
    ]


def test_paired_differences_match_seed_by_seed():
    from tase_loss.experiments.runner import paired_differences

    runs = _part("ntxent", [0.50, 0.70, 0.60])["runs"] + _part("tase", [0.55, 0.68], seeds=[0, 1])["runs"]
    difference = paired_differences(runs, ["ntxent", "tase"])["tase"]["all"]
    assert difference["per_seed"] == pytest.approx({"0": 0.05, "1": -0.02})
    assert difference["mean"] == pytest.approx(0.015) and difference["n"] == 2
    assert difference["std"] == pytest.approx(np.std([0.05, -0.02], ddof=1))


def test_strict_json_replaces_nan_with_null_and_warns(tmp_path):
    from tase_loss.experiments.reporting import write_json

    path = tmp_path / "results.json"
    with pytest.warns(UserWarning, match=r"results.runs\[0\].value"):
        write_json({"runs": [{"value": float("nan")}]}, str(path))
    assert json.loads(path.read_text()) == {"runs": [{"value": None}]}


# --- the suite: equal epochs under a budget, parallel jobs --------------------------------------


def test_budget_plan_gives_every_method_the_same_epochs():
    from tase_loss.experiments.suite import plan_budget

    seconds = {"ntxent": 1.0, "tase": 1.5, "tase-oracle": 1.5, "ts": 1.0, "rwsam": 2.0}
    plan = plan_budget(seconds, num_seeds=2, budget_seconds=700.0)
    # one lane: 2 seeds x 7 s per epoch of all five = 14 s per epoch -> 50 epochs
    assert plan.methods == tuple(seconds) and plan.epochs == 50 and plan.dropped == ()
    parallel = plan_budget(seconds, num_seeds=2, budget_seconds=700.0, parallel=4)
    assert parallel.epochs > plan.epochs and parallel.estimated_seconds <= 700.0
    # 270 s fit 19 epochs of all five (< 20): rwSAM goes, the other four get 270 / 10 = 27
    short = plan_budget(seconds, num_seeds=2, budget_seconds=270.0, min_epochs=20)
    assert short.dropped == ("rwsam",) and short.epochs == 27 and "rwsam" not in short.methods
    shorter = plan_budget(seconds, num_seeds=2, budget_seconds=170.0, min_epochs=20)
    assert shorter.dropped == ("rwsam", "ts") and shorter.epochs == 21
    with pytest.raises(ValueError, match="raise --budget-minutes"):
        plan_budget(seconds, num_seeds=2, budget_seconds=10.0, min_epochs=20)
    assert plan_budget(seconds, 2, 700.0, max_epochs=30).epochs == 30


@pytest.mark.slow
def test_parallel_jobs_merge_into_one_table(tmp_path):
    output = tmp_path / "suite"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tase_loss.experiments",
            "--methods",
            "ntxent,tase",
            "--seeds",
            "0",
            "--epochs",
            "2",
            "--warmup-epochs",
            "1",
            "--parallel",
            "2",
            "--output",
            str(output),
        ],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": REPOSITORY},
    )
    assert result.returncode == 0, result.stderr
    results = json.loads((output / "results.json").read_text())
    assert set(results["summary"]) == {"ntxent", "tase"} and "tase" in results["differences"]
    assert (output / "jobs" / "tase_seed0" / "results.json").exists()
    assert "epoch 2/2" in (output / "jobs" / "tase_seed0" / "log.txt").read_text()


@pytest.mark.slow
def test_budget_suite_times_the_methods_and_gives_equal_epochs(capsys, tmp_path):
    output = str(tmp_path / "budget")
    code = cli.main(
        [
            "--budget-minutes",
            "1.5",
            "--methods",
            "ntxent,tase",
            "--seeds",
            "0",
            "--min-epochs",
            "2",
            "--no-progress",
            "--no-checkpoints",
            "--output",
            output,
        ]
    )
    assert code == 0, capsys.readouterr().err
    with open(os.path.join(output, "results.json"), encoding="utf-8") as handle:
        results = json.load(handle)
    plan = results["budget"]["plan"]
    assert set(results["budget"]["epoch_seconds"]) == {"ntxent", "tase"}
    assert {run["epochs_completed"] for run in results["runs"]} == {plan["epochs"]} and plan["epochs"] >= 2
    assert not os.path.exists(os.path.join(output, "checkpoints"))


# --- recipes in examples/ run a few steps ------------------------------------------------------


def _load_example(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPOSITORY, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "name, arguments",
    [
        ("simclr_tase", {}),
        ("moco_v2_tase", {}),
        ("byol_simsiam_tase", {"variant": "byol"}),
        ("byol_simsiam_tase", {"variant": "simsiam"}),
    ],
)
def test_recipe_runs_through_the_tase_phase(name, arguments):
    # 4 batches per epoch: steps 5-6 run after the first estimate, i.e. with TASE active
    loss = _load_example(name).main(**arguments, epochs=2, warmup_epochs=1, max_steps=6)
    assert np.isfinite(loss)


# --- end to end on the embedded default --------------------------------------------------------


@pytest.mark.slow
def test_embedded_default_end_to_end(capsys, tmp_path):
    output = str(tmp_path / "out")
    code = cli.main(["--epochs", "2", "--warmup-epochs", "1", "--seeds", "0,1", "--output", output])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Many" in captured.out and "Few" in captured.out and "ntxent (2 seeds)" in captured.out
    with open(os.path.join(output, "results.json"), encoding="utf-8") as handle:
        results = json.load(handle)
    assert set(results["summary"]) == {"ntxent", "tase"}
    assert results["dataset"]["class_counts"] == [130, 100, 77, 60, 46, 36, 28, 21, 16, 13]
    assert len(results["runs"]) == 4
    tase_run = next(run for run in results["runs"] if run["method"] == "tase")
    assert "temperature" in tase_run["sample_statistics"] and "spearman" in tase_run["history"][-1]
    # each estimate's summary, as the plot's over-epochs panel reads it
    last = tase_run["history"][-1]
    assert last["temperature_min"] <= last["temperature_max"] and last["weight_min"] <= last["weight_max"]
    assert last["num_groups"] == len(last["group_sizes"]) and last["log_frequency_span"] >= 0
    # the default estimator's own diagnostics: whether it counted groups, and its cost
    assert 0.0 <= last["estimator_trust"] <= 1.0 and last["estimator_seconds"] > 0
    assert "tase - ntxent (paired, 2)" in captured.out and set(results["differences"]) == {"tase"}
    # not a terminal: one plain progress line per epoch, no progress-bar redraws
    assert "ntxent seed 0 epoch 2/2: loss" in captured.err and "\r" not in captured.err
    assert os.path.getsize(os.path.join(output, "results.png")) > 10_000


def test_cli_resume_continues_and_refuses_changed_settings(capsys, tmp_path):
    output = str(tmp_path / "resume")
    common = [
        "--methods",
        "moco-tase",
        "--seeds",
        "0",
        "--epochs",
        "3",
        "--warmup-epochs",
        "1",
        "--checkpoint-every",
        "1",
        "--no-progress",
        "--output",
        output,
    ]
    assert cli.main([*common, "--stop-after-epochs", "1"]) == 0
    checkpoint = os.path.join(output, "checkpoints", "moco-tase_seed0.pt")
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1
    capsys.readouterr()
    code, lines = _run_main(capsys, [*common, "--resume", "--queue-size", "512"])
    assert code == 2 and len(lines) == 1, lines
    assert "settings.moco.queue_size: 4096 -> 512" in lines[0] and "--resume-anyway" in lines[0]
    with open(os.path.join(output, "results.json"), encoding="utf-8") as handle:
        assert "partial" not in json.load(handle)  # the refused resume wrote nothing
    assert cli.main([*common, "--resume"]) == 0
    with open(os.path.join(output, "results.json"), encoding="utf-8") as handle:
        assert json.load(handle)["runs"][0]["epochs_completed"] == 3


def test_cli_output_under_a_file_and_a_corrupt_checkpoint_are_one_line(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, lines = _run_main(capsys, ["--output", str(blocker / "out"), "--epochs", "1"])
    assert code == 2 and len(lines) == 1 and "--output" in lines[0], lines
    output = tmp_path / "corrupt"
    (output / "checkpoints").mkdir(parents=True)
    (output / "checkpoints" / "ntxent_seed0.pt").write_bytes(b"\x00garbage")
    code, lines = _run_main(
        capsys, ["--methods", "ntxent", "--seeds", "0", "--epochs", "1", "--resume", "--output", str(output)]
    )
    assert code == 2 and len(lines) == 1 and "cannot resume from" in lines[0], lines
