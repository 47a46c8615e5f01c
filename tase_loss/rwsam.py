"""rwSAM: re-weighted sharpness-aware minimization (Liu, HaoChen, Gaidon, Ma, ICLR 2022).

"Self-supervised Learning is More Robust to Dataset Imbalance" regularizes SSL on
long-tailed data with a SAM step whose *ascent* uses a re-weighted loss that favours
rare samples, and whose *descent* uses the ordinary loss. Per step, two passes:

1. the **weighted** loss ``L_w`` (rare samples weigh more) is back-propagated and the
   parameters move to the perturbed point ``p + e`` with::

       e = rho * g / (||g|| + 1e-12)                      (SAM)
       e = rho * p * p * g / (|| |p| * g || + 1e-12)      (adaptive SAM, ASAM)

   where ``g`` is the gradient of ``L_w`` and the norm is global over all parameters;
2. the **unweighted** loss is back-propagated at ``p + e``; the parameters are restored
   to ``p`` and the base optimizer steps with that gradient.

What we follow:

- ``Liuhong99/Imbalanced-SSL`` (MIT): ``cifar/main_sam_weight.py`` (per-sample weights
  ``weight1`` in pass 1, ``weight2 = ones`` in pass 2; ``SAM(..., adaptive=True, rho=0.5)``
  with SGD), ``imagenet/pretrain_moco_sam_rare.py`` (weighted ascent, plain cross-entropy
  in pass 2).
- ``davda54/sam`` (``sam.py``): ``first_step``/``second_step``, the ``1e-12`` in the
  denominator, the adaptive form, the per-group ``rho``, the shared ``param_groups`` so
  that learning-rate schedulers act on the base optimizer.

What we deliberately do differently:

- The official weighted loss (``SimSiamLossRe``, ``loss_version="original"``) is
  ``mean_j(w_j l_j) = sum_j w_j l_j / N``; this library's losses give the weighted mean
  ``sum_j w_j l_j / sum_j w_j``. The two differ by the positive factor
  ``N / sum_j w_j``, and the perturbation is normalized, so they give the same step
  (up to the ``1e-12``): **only relative weights within a batch matter**; scaling all
  weights by a constant gives the same step (tested).
- The official default ``loss_version="simplified"`` silently ignores the weights
  (plain SAM); here the weights are whatever the first pass's loss uses.
- The official code runs BatchNorm and the MoCo momentum update / enqueue in both passes,
  so they happen twice per step, and its second pass contrasts against a queue that
  already holds the batch's own keys. Here BatchNorm statistics update in pass 1 only
  (:func:`frozen_batch_norm` around pass 2), a :class:`~tase_loss.TASEContrastiveLoss`
  queue is read-only in pass 1 (``criterion.queue_frozen()``) and enqueues in pass 2,
  and momentum-encoder keys (with their momentum update) are computed once per step and
  reused in both passes; :func:`rwsam_step` does all of this
  (:attr:`RwSAM.is_perturbed` tells user code which pass it is in).
- Parameters are restored from a saved copy (exact), not by subtracting ``e``; a
  parameter perturbed in pass 1 is restored even if it gets no gradient in pass 2.
- ``state_dict()`` holds the base optimizer's state (momentum buffers etc.).

The weights come from :class:`~tase_loss.FrequencyWeights` over a
:class:`~tase_loss.PseudoLabeler` (kNN density, label-free as in the paper, or TASE's
default estimate).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

from tase_loss._validation import check_bool, check_real

__all__ = ["RwSAM", "frozen_batch_norm", "rwsam_step"]

_NORM_EPSILON = 1e-12


class RwSAM(Optimizer):
    """SAM-style optimizer wrapper for rwSAM: weighted ascent, unweighted descent.

    Use it like ``davda54/sam``'s ``SAM``: back-propagate the weighted loss, call
    :meth:`first_step`; back-propagate the unweighted loss at the perturbed point,
    call :meth:`second_step` (or pass that second forward-backward as a closure to
    :meth:`step`). :func:`rwsam_step` does one whole step. Calls out of order raise a
    ``RuntimeError`` instead of silently taking a wrong step.

    Args:
        params: parameters or parameter groups (a group may set its own ``rho`` and
            ``adaptive``). With an optimizer instance as ``base_optimizer`` they must be
            that optimizer's parameters.
        base_optimizer: an optimizer class (built here on the same parameter groups with
            ``**base_kwargs``) or an existing optimizer instance.
        rho: neighbourhood radius ``>= 0`` (the official rwSAM runs use 0.5 with
            ``adaptive=True``).
        adaptive: use the scale-invariant ASAM perturbation.
        **base_kwargs: the base optimizer's arguments (``lr=...``), for a class only.

    Example:
        >>> import torch
        >>> from tase_loss import TASEContrastiveLoss
        >>> model = torch.nn.Linear(8, 4)
        >>> optimizer = RwSAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
        >>> criterion = TASEContrastiveLoss(temperature=0.2)
        >>> x0, x1, weight = torch.randn(6, 8), torch.randn(6, 8), torch.rand(6) + 0.5
        >>> criterion(model(x0), model(x1), weight=weight).backward()   # weighted
        >>> optimizer.first_step(zero_grad=True)
        >>> criterion(model(x0), model(x1)).backward()                  # unweighted
        >>> optimizer.second_step(zero_grad=True)
        >>> optimizer.is_perturbed
        False
    """

    def __init__(
        self,
        params: Iterable[Any],
        base_optimizer: Union[type[Optimizer], Optimizer],
        rho: float = 0.05,
        adaptive: bool = False,
        **base_kwargs: Any,
    ) -> None:
        _check_rho(rho)
        _check_adaptive(adaptive)
        defaults = {"rho": float(rho), "adaptive": adaptive}
        if isinstance(base_optimizer, Optimizer):
            if base_kwargs:
                raise TypeError(
                    f"base optimizer arguments {sorted(base_kwargs)} can only be given with an "
                    "optimizer class, not an instance"
                )
            given = {id(p) for p in _flatten_params(params)}
            owned = {id(p) for group in base_optimizer.param_groups for p in group["params"]}
            if given != owned:
                raise ValueError("params must be exactly the parameters of the base_optimizer instance")
            super().__init__(base_optimizer.param_groups, defaults)
            self.base_optimizer = base_optimizer
        elif isinstance(base_optimizer, type) and issubclass(base_optimizer, Optimizer):
            super().__init__(params, defaults)
            self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        else:
            raise TypeError(
                "base_optimizer must be a torch.optim.Optimizer subclass or instance, "
                f"got {base_optimizer!r}"
            )
        # One list of groups: a learning-rate scheduler on this optimizer drives the base.
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self._perturbed = False

    @property
    def is_perturbed(self) -> bool:
        """Whether the parameters sit at the perturbed point (between the two steps)."""
        return self._perturbed

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to this optimizer and to the base optimizer alike."""
        param_group.setdefault("rho", self.defaults["rho"])
        param_group.setdefault("adaptive", self.defaults["adaptive"])
        _check_rho(param_group["rho"])
        _check_adaptive(param_group["adaptive"])
        if not hasattr(self, "base_optimizer"):  # called by Optimizer.__init__
            super().add_param_group(param_group)
            return
        self.base_optimizer.add_param_group(param_group)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move to the perturbed point ``p + e`` using the gradients now in ``.grad``.

        Call it after back-propagating the **weighted** loss.

        Raises:
            RuntimeError: if the parameters are already perturbed, if no parameter has
                a gradient, or if the gradient norm is not finite (nothing is changed).
        """
        if self._perturbed:
            raise RuntimeError(
                "first_step() was called twice: the parameters are already perturbed; "
                "call second_step() after the unweighted backward pass"
            )
        with_grad = [
            (group, p) for group in self.param_groups for p in group["params"] if p.grad is not None
        ]
        if not with_grad:
            raise RuntimeError(
                "first_step() found no gradients: back-propagate the weighted loss first"
            )
        grad_norm = self._grad_norm(with_grad)
        if not math.isfinite(float(grad_norm)):
            raise RuntimeError(f"the gradient norm is {float(grad_norm)}; no step was taken")
        for group, p in with_grad:
            scale = group["rho"] / (grad_norm + _NORM_EPSILON)
            perturbation = p.grad * scale.to(p)
            if group["adaptive"]:
                perturbation = perturbation * p * p
            self.state[p]["old_p"] = p.detach().clone()
            p.add_(perturbation)
        self._perturbed = True
        if zero_grad:
            self.zero_grad()

    def second_step(self, zero_grad: bool = False) -> None:
        """Restore the parameters and step the base optimizer with the gradients now in ``.grad``.

        Call it after back-propagating the **unweighted** loss at the perturbed point.
        It goes through :meth:`step`, so learning-rate schedulers see the step.

        Raises:
            RuntimeError: if :meth:`first_step` has not been called.
        """
        if not self._perturbed:
            raise RuntimeError("second_step() needs first_step() first")
        self.step()
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:  # type: ignore[override]
        """Finish a perturbed step, or run the second pass from a closure.

        - Perturbed (after :meth:`first_step`), no closure: restore the parameters and
          step the base optimizer (this is :meth:`second_step`).
        - Not perturbed, with a closure (as in ``davda54/sam``): the weighted loss must
          already be back-propagated; this runs :meth:`first_step` (zeroing the
          gradients), then ``closure()``, which must compute the **unweighted** loss and
          call ``backward()``, then the second step. If the closure raises, the
          parameters are restored before the error propagates.

        Returns:
            What ``closure`` returned, or ``None``.

        Raises:
            RuntimeError: for any other combination.
        """
        if self._perturbed:
            if closure is not None:
                raise RuntimeError(
                    "the parameters are already perturbed: call second_step() (or step() "
                    "without a closure) after the unweighted backward pass"
                )
            self._restore()
            self.base_optimizer.step()
            return None
        if closure is None:
            raise RuntimeError(
                "RwSAM takes two passes per step: back-propagate the weighted loss, call "
                "first_step(), back-propagate the unweighted loss, call second_step(); or "
                "pass the second forward-backward to step(closure)"
            )
        self.first_step(zero_grad=True)
        try:
            with torch.enable_grad():
                result = closure()
        except BaseException:
            self._restore()
            raise
        self._restore()
        self.base_optimizer.step()
        return result

    @torch.no_grad()
    def _restore(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if state and "old_p" in state:
                    p.copy_(state.pop("old_p"))
        self._perturbed = False

    def _grad_norm(self, with_grad: list[tuple[dict[str, Any], Tensor]]) -> Tensor:
        """``|| g ||`` or ``|| |p| * g ||`` over all parameters, on the first one's device."""
        device = with_grad[0][1].device
        norms = [
            ((p.abs() * p.grad) if group["adaptive"] else p.grad).norm(p=2).to(device)
            for group, p in with_grad
        ]
        return torch.stack(norms).norm(p=2)

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state (its groups carry ``rho`` and ``adaptive``).

        Raises:
            RuntimeError: between :meth:`first_step` and :meth:`second_step`, where the
                parameters are not the ones a resumed run should start from.
        """
        if self._perturbed:
            raise RuntimeError("state_dict() between first_step() and second_step(): finish the step first")
        return {"base_optimizer": self.base_optimizer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        if not isinstance(state_dict, dict) or set(state_dict) != {"base_optimizer"}:
            raise ValueError("state_dict must be RwSAM.state_dict()'s output: {'base_optimizer': ...}")
        if self._perturbed:
            raise RuntimeError("load_state_dict() between first_step() and second_step()")
        for group in state_dict["base_optimizer"]["param_groups"]:
            _check_rho(group.get("rho"))
            _check_adaptive(group.get("adaptive"))
        self.base_optimizer.load_state_dict(state_dict["base_optimizer"])
        self.param_groups = self.base_optimizer.param_groups

    def __repr__(self) -> str:
        return f"RwSAM(base_optimizer={self.base_optimizer!r})"


@contextlib.contextmanager
def frozen_batch_norm(*modules: nn.Module) -> Iterator[None]:
    """Stop BatchNorm running-statistics updates: for rwSAM's second pass.

    Inside the block, every BatchNorm layer among ``modules`` (and their submodules)
    still normalizes with the batch statistics in training mode but does not update
    ``running_mean``, ``running_var`` or ``num_batches_tracked`` (its
    ``track_running_stats`` is switched off). Unlike setting the momentum to 0
    (``davda54/sam``'s ``bypass_bn``), this also leaves ``num_batches_tracked``, and so
    ``momentum=None`` layers, untouched. The statistics then come from pass 1, at the
    unperturbed weights, as in ordinary training.

    Args:
        modules: the model(s) of the second pass.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
        >>> with frozen_batch_norm(model):
        ...     _ = model(torch.randn(8, 4))
        >>> int(model[1].num_batches_tracked)
        0
    """
    batch_norms = [m for m in _submodules(modules) if isinstance(m, _BatchNorm)]
    tracking = [m.track_running_stats for m in batch_norms]
    try:
        for batch_norm in batch_norms:
            batch_norm.track_running_stats = False
        yield
    finally:
        for batch_norm, was_tracking in zip(batch_norms, tracking):
            batch_norm.track_running_stats = was_tracking


@contextlib.contextmanager
def _frozen_queues(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Freeze every module that offers ``queue_frozen()`` (a queue of keys, as MoCo's)."""
    with contextlib.ExitStack() as stack:
        for module in _submodules(modules):
            freeze = getattr(module, "queue_frozen", None)
            if callable(freeze):
                stack.enter_context(freeze())
        yield


def _submodules(modules: Iterable[nn.Module]) -> list[nn.Module]:
    """Every distinct module among ``modules`` and their submodules."""
    modules = list(modules)
    for module in modules:
        if not isinstance(module, nn.Module):
            raise TypeError(f"expected nn.Module objects, got {type(module).__name__}")
    return list({id(m): m for module in modules for m in module.modules()}.values())


def rwsam_step(
    optimizer: RwSAM,
    compute_loss: Callable[[Optional[Tensor]], Tensor],
    weight: Tensor,
    *,
    freeze: Iterable[nn.Module] = (),
) -> Tensor:
    """One whole rwSAM step: weighted ascent, unweighted descent.

    Running state among ``freeze`` changes once per step: BatchNorm statistics in
    pass 1 (at the unperturbed weights; :func:`frozen_batch_norm` in pass 2), and a
    :class:`~tase_loss.TASEContrastiveLoss` MoCo queue in pass 2 (read-only in pass 1,
    so both passes contrast against the same queue and the keys are enqueued once).
    Compute momentum-encoder keys or BYOL targets, and their momentum update, once
    before the call and reuse them inside ``compute_loss``.

    Args:
        optimizer: the :class:`RwSAM` optimizer.
        compute_loss: runs the forward pass and returns the scalar loss; called with
            ``weight`` for pass 1 and with ``None`` (unweighted) for pass 2.
        weight: ``(B,)`` per-sample weights of the batch; only their ratios matter.
        freeze: the model(s) and loss module(s) whose running state is described above.

    Returns:
        The unweighted loss at the perturbed point (pass 2), detached.

    Example:
        >>> import torch
        >>> from tase_loss import TASEContrastiveLoss
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8))
        >>> optimizer = RwSAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
        >>> criterion = TASEContrastiveLoss(temperature=0.2)
        >>> x0, x1 = torch.randn(6, 8), torch.randn(6, 8)
        >>> loss = rwsam_step(optimizer, lambda w: criterion(model(x0), model(x1), weight=w),
        ...                   weight=torch.rand(6) + 0.5, freeze=[model, criterion])
        >>> int(model[1].num_batches_tracked)  # pass 1's two forwards; pass 2 is frozen
        2
    """
    if not isinstance(optimizer, RwSAM):
        raise TypeError(f"optimizer must be an RwSAM, got {type(optimizer).__name__}")
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    freeze = _submodules(freeze)
    optimizer.zero_grad()
    with _frozen_queues(freeze):
        compute_loss(weight).backward()
    optimizer.first_step(zero_grad=True)
    try:
        with frozen_batch_norm(*freeze):
            loss = compute_loss(None)
            loss.backward()
    except BaseException:
        optimizer._restore()
        optimizer.zero_grad()
        raise
    optimizer.second_step(zero_grad=True)
    return loss.detach()


def _flatten_params(params: Iterable[Any]) -> list[Tensor]:
    flat: list[Tensor] = []
    for item in params:
        flat.extend(item["params"] if isinstance(item, dict) else [item])
    return flat


def _check_rho(rho: object) -> None:
    check_real("rho", rho, 0.0)


def _check_adaptive(adaptive: object) -> None:
    check_bool("adaptive", adaptive)
