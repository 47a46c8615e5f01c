"""How well do k-means cluster sizes estimate class frequency? Measured on trained encoders.

TASE maps each sample's estimated frequency f_i to a temperature and a weight; with the
``cluster-size`` estimator (the spec's) f_i = n_c(i) / N, the size of its k-means
cluster. This script takes encoders trained by ``tase-experiment`` (their checkpoints),
extracts backbone features of the long-tailed training set (no augmentation), runs one
estimate of the library's PseudoLabeler with ``cluster-size`` for several k, and
reports how the estimates track the true class frequencies
(``tase_loss.experiments.evaluation.frequency_quality``):

- nmi: pseudo-labels vs true labels;
- spearman: rank correlation of f_i with the true frequency of i's class;
- few/many: geometric-mean f over true Few samples / over true Many samples (the true
  value is printed as "true");
- t few/many: the same ratio for the TASE temperatures the default power map
  (gamma 0.25) would assign;
- "knn-density" rows: the rank correlation of an alternative estimate, the mean cosine
  similarity to the 20 nearest neighbours, with the true class frequency.

Usage (``studies/frequency_estimators.py`` compares every estimator)::

    python studies/pseudo_label_quality.py --data digits --checkpoints runs/digits_default/checkpoints/*.pt
    python studies/pseudo_label_quality.py --data ../shared/data/cifar10_lt_r100.npz \
        --encoder small-cnn --checkpoints runs/cifar10_lt_seed*/checkpoints/*.pt
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from tase_loss import PseudoLabeler, TemperatureMap, build_estimator
from tase_loss.experiments.data import load_digits_lt, load_npz
from tase_loss.experiments.encoders import build_model
from tase_loss.experiments.evaluation import extract_features, frequency_quality


def _density_diagnostics(features: torch.Tensor, labels: np.ndarray, counts: np.ndarray) -> dict[str, float]:
    """An alternative to cluster sizes: mean cosine similarity to the 20 nearest neighbours."""
    from scipy.stats import spearmanr

    unit = torch.nn.functional.normalize(features.float(), dim=1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(-2.0)
    density = similarity.topk(20, dim=1).values.mean(dim=1).numpy()
    return {"frequency_spearman": float(spearmanr(density, counts[labels]).statistic)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--encoder", default="digits-cnn")
    parser.add_argument("--checkpoints", nargs="+", required=True)
    parser.add_argument("--multipliers", default="1,2,5,10,20", help="k = multiplier x number of classes")
    parser.add_argument("--output", default=None, help="write the rows as JSON here")
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    data = load_digits_lt() if arguments.data == "digits" else load_npz(arguments.data)
    labels = data.y_train
    counts = np.bincount(labels) / labels.size
    few = np.isin(labels, data.groups["few"])
    many = np.isin(labels, data.groups["many"])
    true_ratio = float(np.exp(np.log(counts[labels][few]).mean() - np.log(counts[labels][many]).mean()))
    print(f"true few/many frequency ratio {true_ratio:.3f}")
    temperature_map = TemperatureMap()
    rows = []
    for path in arguments.checkpoints:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = build_model(arguments.encoder, data.x_train.shape[1])
        model.load_state_dict(state["model"])
        features = torch.from_numpy(extract_features(model.backbone, data.x_train, torch.device("cpu")))
        rows.append({"checkpoint": path, "epochs": state["epoch"], "k": "knn-density",
                     **_density_diagnostics(features, labels, counts)})
        print(f"{path} knn density: spearman {rows[-1]['frequency_spearman']:+.3f}")
        for multiplier in (int(m) for m in arguments.multipliers.split(",")):
            k = multiplier * data.num_classes
            estimator = build_estimator("cluster-size", num_clusters=k)
            labeler = PseudoLabeler(labels.size, features.shape[1], estimator, momentum=0.0, num_threads=1)
            labeler.update(torch.arange(labels.size), features)
            labeler.estimate()
            frequency = labeler.frequency(torch.arange(labels.size))
            quality = frequency_quality(np.log(frequency.numpy()), labels, data.groups, labeler.labels.numpy())
            result = {
                "nmi": quality["nmi"],
                "frequency_spearman": quality["spearman"],
                "frequency_few_over_many": quality["few_over_many"],
                "gap_recovered": quality["gap_recovered"],
            }
            temperature = temperature_map(frequency, labeler.frequency_reference()).numpy()
            log_temperature = np.log(temperature)
            result["t_few_over_many"] = float(np.exp(log_temperature[few].mean() - log_temperature[many].mean()))
            row = {"checkpoint": path, "epochs": state["epoch"], "k": k, **result}
            rows.append(row)
            print(
                f"{path} k={k:4d}: nmi {result['nmi']:.3f} spearman {result['frequency_spearman']:+.3f} "
                f"few/many {result['frequency_few_over_many']:.3f} (true {true_ratio:.3f}) "
                f"t few/many {result['t_few_over_many']:.3f}"
            )
    if arguments.output:
        with open(arguments.output, "w", encoding="utf-8") as handle:
            json.dump({"true_few_over_many": true_ratio, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
