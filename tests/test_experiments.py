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
    group_accuracies,
    knn_predict,
    linear_probe,
    per_class_accuracy,
    pseudo_label_diagnostics,
)
from tase_loss.experiments.methods import METHODS, MethodContext, MethodSettings, build_method
from tase_loss.experiments.training import TrainingConfig, train

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
        (["--losses", "ntxent,not-a-loss"], "unknown loss not-a-loss"),
        (["--epochs", "0"], "--epochs"),
        (["--seeds", "a,b"], "comma-separated integers"),
        (["--encoder", "vgg"], "unknown encoder"),
        (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--encoder", "vgg"], "not available"
         if not torch.cuda.is_available() else "unknown encoder"),
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
        [sys.executable, "-m", "tase_loss.experiments", "--losses", "nope"],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": REPOSITORY},
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"tase-experiment: error: unknown loss nope; choose from {', '.join(sorted(METHODS))}"
    ]


def test_core_import_does_not_load_optional_dependencies():
    code = (
        "import sys, tase_loss; "
        "print(sorted(m for m in ('sklearn', 'matplotlib', 'kornia', 'tase_loss.experiments') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": REPOSITORY})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_list_losses(capsys):
    assert cli.main(["--list-losses"]) == 0
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


def test_pseudo_label_diagnostics_perfect_and_shuffled():
    labels = np.repeat(np.arange(3), [6, 3, 1])
    frequency = (np.bincount(labels) / labels.size)[labels]
    groups = {"many": [0], "medium": [1], "few": [2]}
    perfect = pseudo_label_diagnostics(labels + 5, frequency, labels, groups)
    assert perfect["nmi"] == pytest.approx(1.0)
    assert perfect["frequency_spearman"] == pytest.approx(1.0)
    assert perfect["frequency_few_over_many"] == pytest.approx(0.1 / 0.6)
    flat = pseudo_label_diagnostics(np.zeros(10, int), np.full(10, 1.0), labels, groups)
    assert flat["nmi"] == pytest.approx(0.0) and flat["frequency_few_over_many"] == pytest.approx(1.0)
    assert np.isnan(flat["frequency_spearman"])


# --- training: checkpoint/resume equals an uninterrupted run -----------------------------------


def _train_tiny(loss, tmp_path, name, stop_after=None, epochs=3):
    torch.manual_seed(0)
    images = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    model = build_model("digits-cnn", 1, projection_dim=16)
    settings = MethodSettings(num_clusters=(4,), warmup_epochs=0, queue_size=64)
    method = build_method(loss, MethodContext(40, 0, torch.device("cpu"), settings=settings), model)
    from tase_loss.experiments.augmentations import simclr_augmentation

    config = TrainingConfig(
        epochs=epochs, batch_size=16, checkpoint_path=str(tmp_path / f"{name}.pt"),
        stop_after_epochs=stop_after, progress=False,
    )
    history = train(model, method, images, simclr_augmentation(8, 1), config)
    return model, method, history, config


@pytest.mark.parametrize("loss", ["tase", "moco-tase", "byol-tase"])
def test_resume_matches_uninterrupted_run(tmp_path, loss):
    full_model, full_method, full_history, _ = _train_tiny(loss, tmp_path, "full")
    _train_tiny(loss, tmp_path, "split", stop_after=1)
    # a fresh process would build new objects from scratch: do the same here
    resumed_model, resumed_method, resumed_history, _ = _train_tiny(loss, tmp_path, "split")
    assert len(resumed_history) == len(full_history) == 3
    assert [record["loss"] for record in resumed_history] == [record["loss"] for record in full_history]
    for (name, value), (_, other) in zip(full_model.state_dict().items(), resumed_model.state_dict().items()):
        assert torch.equal(value, other), name
    full_state, resumed_state = full_method.checkpoint_state(), resumed_method.checkpoint_state()
    for name, value in full_state["module"].items():
        assert torch.equal(value, resumed_state["module"][name]), name
    assert torch.equal(full_method.labeler.log_frequency, resumed_method.labeler.log_frequency)
    assert full_method.labeler.num_fits == resumed_method.labeler.num_fits == 3


def test_tase_method_reports_sample_statistics(tmp_path):
    _, method, history, _ = _train_tiny("tase", tmp_path, "stats", epochs=2)
    statistics = method.sample_statistics()
    assert set(statistics) == {"frequency", "temperature", "weight"}
    assert statistics["temperature"].shape == (40,)
    assert "reclustered" in history[0]
    _, plain, _, _ = _train_tiny("ntxent", tmp_path, "plain", epochs=1)
    assert plain.sample_statistics() == {}


def test_ablation_methods_switch_one_mechanism_off():
    model = build_model("digits-cnn", 1, projection_dim=16)
    context = MethodContext(40, 0, torch.device("cpu"), settings=MethodSettings(num_clusters=(4,)))
    temperature_only = build_method("tase-temperature", context, model)
    weight_only = build_method("tase-reweight", context, model)
    frequency = torch.tensor([0.5, 0.05])
    assert temperature_only.reweighter(frequency).tolist() == [1.0, 1.0]
    assert weight_only.temperature_map(frequency).tolist() == pytest.approx([0.2, 0.2])
    assert temperature_only.temperature_map(frequency)[1] < temperature_only.temperature_map(frequency)[0]


def test_oracle_method_uses_true_class_frequencies():
    model = build_model("digits-cnn", 1, projection_dim=16)
    labels = np.array([0] * 6 + [1] * 3 + [2])
    settings = MethodSettings(num_clusters=(2,), warmup_epochs=1)
    method = build_method("tase-oracle", MethodContext(10, 0, torch.device("cpu"), settings=settings,
                                                       train_labels=labels), model)
    assert method.on_epoch_end(0) == {} and method.sample_statistics() == {}
    assert method.on_epoch_end(1) == {"reclustered": 1.0}
    statistics = method.sample_statistics()
    np.testing.assert_allclose(statistics["frequency"], [0.6] * 6 + [0.3] * 3 + [0.1], rtol=1e-6)
    assert statistics["weight"][-1] > statistics["weight"][0]
    assert statistics["temperature"][-1] < statistics["temperature"][0]
    with pytest.raises(ValueError, match="true training labels"):
        build_method("tase-oracle", MethodContext(10, 0, torch.device("cpu"), settings=settings), model)


def test_merge_results_resummarizes_and_refuses_partial():
    from tase_loss.experiments.runner import merge_results

    dataset = {"name": "toy", "class_counts": [2, 1, 1]}

    def part(loss, accuracies):
        runs = [{"loss": loss, "seed": seed, "linear": {"all": value}, "knn": {"all": value}}
                for seed, value in enumerate(accuracies)]
        return {"dataset": dataset, "config": {}, "runs": runs}

    merged = merge_results([part("ntxent", [0.5, 0.7]), part("tase", [0.6])])
    assert list(merged["summary"]) == ["ntxent", "tase"]
    assert merged["summary"]["ntxent"]["all"]["mean"] == pytest.approx(0.6)
    assert merged["summary"]["ntxent"]["all"]["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    with pytest.raises(ValueError, match="unfinished"):
        merge_results([{"partial": True, "runs": []}])
    with pytest.raises(ValueError, match="different datasets"):
        merge_results([part("ntxent", [0.5]), {**part("tase", [0.6]), "dataset": {"name": "other"}}])


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
    # 4 batches per epoch: steps 5-6 run after the first clustering, i.e. with TASE active
    loss = _load_example(name).main(**arguments, epochs=2, warmup_epochs=0, max_steps=6)
    assert np.isfinite(loss)


# --- end to end on the embedded default --------------------------------------------------------


@pytest.mark.slow
def test_embedded_default_end_to_end(capsys, tmp_path):
    output = str(tmp_path / "out")
    code = cli.main(["--epochs", "2", "--warmup-epochs", "0", "--seeds", "0,1", "--no-progress", "--output", output])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Many" in captured.out and "Few" in captured.out and "ntxent (2 seeds)" in captured.out
    with open(os.path.join(output, "results.json"), encoding="utf-8") as handle:
        results = json.load(handle)
    assert set(results["summary"]) == {"ntxent", "tase"}
    assert results["dataset"]["class_counts"] == [130, 100, 77, 60, 46, 36, 28, 21, 16, 13]
    assert len(results["runs"]) == 4
    tase_run = next(run for run in results["runs"] if run["loss"] == "tase")
    assert "temperature" in tase_run["sample_statistics"] and "nmi" in tase_run["history"][-1]
    assert os.path.getsize(os.path.join(output, "results.png")) > 10_000
