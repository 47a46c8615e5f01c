"""Pre-training methods of the runner, and their explicit registry.

A *method* is the runner's unit: everything that makes one way of pre-training
(a criterion, a pseudo-labeler, a momentum encoder, a two-pass optimizer step) behind
the hooks of :class:`~tase_loss.experiments.methods.base.Method`. Each family lives in
its own module next to its settings; this module lists them all in :data:`METHODS`
(no registration by import side effect) and gathers their settings in
:class:`MethodSettings`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from tase_loss.experiments.encoders import ContrastiveModel
from tase_loss.experiments.methods.base import Batch, Method, MethodContext, MixedPrecision
from tase_loss.experiments.methods.contrastive import (
    ContrastiveMethod,
    InputDensityContrastiveMethod,
    MoCoSettings,
    OracleContrastiveMethod,
    TASESettings,
)
from tase_loss.experiments.methods.cosine import CosineMethod
from tase_loss.experiments.methods.ood import OODGuidedMethod
from tase_loss.experiments.methods.rwsam import RwSAMMethod, RwSAMSettings
from tase_loss.experiments.methods.schedule import ScheduleSettings, TemperatureScheduleMethod

__all__ = [
    "METHODS",
    "Batch",
    "Method",
    "MethodContext",
    "MethodSettings",
    "MixedPrecision",
    "build_method",
    "parse_methods",
]


@dataclass(frozen=True)
class MethodSettings:
    """Every method family's settings, one field per family."""

    tase: TASESettings = field(default_factory=TASESettings)
    moco: MoCoSettings = field(default_factory=MoCoSettings)
    rwsam: RwSAMSettings = field(default_factory=RwSAMSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)


MethodFactory = Callable[[MethodContext, ContrastiveModel], Method]


class MethodEntry(NamedTuple):
    factory: MethodFactory
    description: str


METHODS: dict[str, MethodEntry] = {
    "ntxent": MethodEntry(
        lambda context, model: ContrastiveMethod(context, model, None),
        "SimCLR's NT-Xent, one temperature, unit weights",
    ),
    "tase": MethodEntry(
        lambda context, model: ContrastiveMethod(context, model, "both"),
        "TASE: per-sample temperature and weight from the frequency estimates",
    ),
    "tase-temperature": MethodEntry(
        lambda context, model: ContrastiveMethod(context, model, "temperature"),
        "TASE ablation: per-sample temperature only",
    ),
    "tase-reweight": MethodEntry(
        lambda context, model: ContrastiveMethod(context, model, "weight"), "TASE ablation: per-sample weight only"
    ),
    "tase-oracle": MethodEntry(
        OracleContrastiveMethod, "TASE with the true class frequencies (upper bound; reads labels)"
    ),
    "tase-input": MethodEntry(
        InputDensityContrastiveMethod,
        "TASE with one label-free estimate from the raw training images, fixed after the warm-up",
    ),
    "moco": MethodEntry(
        lambda context, model: ContrastiveMethod(context, model, None, moco=True),
        "MoCo v2 InfoNCE (queue, momentum key encoder)",
    ),
    "moco-tase": MethodEntry(
        lambda context, model: ContrastiveMethod(context, model, "both", moco=True),
        "MoCo v2 with TASE temperatures and weights",
    ),
    "byol": MethodEntry(lambda context, model: CosineMethod(context, model, "byol", False), "BYOL cosine loss"),
    "byol-tase": MethodEntry(
        lambda context, model: CosineMethod(context, model, "byol", True), "BYOL cosine loss, TASE-weighted"
    ),
    "simsiam": MethodEntry(
        lambda context, model: CosineMethod(context, model, "simsiam", False), "SimSiam cosine loss"
    ),
    "simsiam-tase": MethodEntry(
        lambda context, model: CosineMethod(context, model, "simsiam", True), "SimSiam cosine loss, TASE-weighted"
    ),
    "rwsam": MethodEntry(RwSAMMethod, "NT-Xent with rwSAM (weighted-ascent SAM), label-free kNN-density weights"),
    "ts": MethodEntry(
        lambda context, model: TemperatureScheduleMethod(context, model, None),
        "NT-Xent with the cosine temperature schedule (TS, t 0.1-1.0)",
    ),
    "tase-ts": MethodEntry(
        lambda context, model: TemperatureScheduleMethod(context, model, "both"),
        "TASE whose base temperature follows the TS cosine schedule",
    ),
    "ood-guided": MethodEntry(
        OODGuidedMethod, "two-stage OOD-guided contrastive recipe (digits: photo patches as OOD)"
    ),
}
"""Method name -> (factory ``(context, model) -> Method``, one-line description)."""


def parse_methods(names: Sequence[str] | str) -> list[str]:
    """Method names from a list or a comma-separated string, checked against :data:`METHODS`.

    Example:
        >>> parse_methods("ntxent, tase")
        ['ntxent', 'tase']
    """
    if isinstance(names, str):
        names = names.split(",")
    methods = [name.strip() for name in names if name.strip()]
    unknown = [name for name in methods if name not in METHODS]
    if unknown or not methods:
        raise ValueError(
            f"unknown method {', '.join(unknown) or '(none given)'}; choose from {', '.join(sorted(METHODS))}"
        )
    return methods


def build_method(name: str, context: MethodContext, model: ContrastiveModel) -> Method:
    """Instantiate the method ``name`` for ``model``, on ``context.device``."""
    (name,) = parse_methods([name])
    return METHODS[name].factory(context, model).to(context.device)
