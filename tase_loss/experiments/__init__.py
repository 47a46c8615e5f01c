"""Experiments: does TASE help on my long-tailed data, and how do I wire it in?

Run ``python -m tase_loss.experiments`` (or ``tase-experiment``) for the embedded
digits-LT comparison, ``--data cifar10_lt_r100.npz --probe cifar10_probe_100shot.npz``
for CIFAR-10-LT. Modules, one job each: :mod:`~tase_loss.experiments.data`,
:mod:`~tase_loss.experiments.encoders`, :mod:`~tase_loss.experiments.augmentations`,
:mod:`~tase_loss.experiments.methods` (the registry of losses),
:mod:`~tase_loss.experiments.training`, :mod:`~tase_loss.experiments.evaluation`,
:mod:`~tase_loss.experiments.reporting`, :mod:`~tase_loss.experiments.runner`,
:mod:`~tase_loss.experiments.cli`.

The optional dependencies (scikit-learn, matplotlib, tqdm; ``pip install
"tase-loss[examples]"``) are imported inside these modules only, never by
``import tase_loss``.
"""
