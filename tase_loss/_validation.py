"""Checks run once at the public boundary; each message names the argument and the value.

Two kinds live here:

- **Hyper-parameters** (plain Python values given to constructors): :func:`check_int`,
  :func:`check_real`, :func:`check_choice`, :func:`check_bool`. Every public
  constructor uses these, so a bad value is phrased the same way everywhere.
- **Tensors** handed to a call. Their metadata (type, dtype, shape, device) is always
  checked on the host. Their *values* (finite, in range) are checked with a host read
  only for CPU tensors outside ``torch.compile``; on an accelerator or while compiling
  the check becomes an asynchronous device assert (``torch._assert_async``), so the
  training step never waits for the device. Meta tensors carry no values: only their
  metadata is checked.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional, TypeVar, Union

import torch
from torch import Tensor

TemperatureLike = Union[float, Tensor]

REDUCTIONS = ("mean", "sum", "none")

# Bounds that keep every loss finite in float32: 1 / t and the weighted row sums stay far
# from overflow for any batch a GPU holds (see docs/METHOD.md, "Numerical range").
MIN_TEMPERATURE = 1e-4
MAX_TEMPERATURE = 1e4
MAX_WEIGHT = 1e12


# --- hyper-parameters -----------------------------------------------------------------


def check_int(name: str, value: object, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    """Require a Python ``int`` (not a ``bool``) within ``[minimum, maximum]``.

    A value of another type raises ``TypeError``, an integer out of range ``ValueError``.

    Example:
        >>> check_int("num_samples", 5, minimum=1)
        5
        >>> check_int("num_samples", 0, minimum=1)
        Traceback (most recent call last):
        ...
        ValueError: num_samples must be an integer >= 1, got 0
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer{_range_text(minimum, maximum)}, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an integer{_range_text(minimum, maximum)}, got {value!r}")
    return value


def check_real(
    name: str,
    value: object,
    minimum: Optional[float] = None,
    maximum: Optional[float] = None,
    *,
    exclusive_minimum: bool = False,
    exclusive_maximum: bool = False,
) -> float:
    """Require a finite real number (``int`` or ``float``, not ``bool``) within the bounds.

    A value of another type raises ``TypeError``, NaN, Inf or out of range ``ValueError``.

    Example:
        >>> check_real("momentum", 0.5, 0.0, 1.0, exclusive_maximum=True)
        0.5
        >>> check_real("temperature", float("nan"), 0.0, exclusive_minimum=True)
        Traceback (most recent call last):
        ...
        ValueError: temperature must be a finite number > 0, got nan
    """
    text = _range_text(minimum, maximum, exclusive_minimum, exclusive_maximum)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a finite number{text}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number{text}, got {value!r}")
    below = minimum is not None and (value <= minimum if exclusive_minimum else value < minimum)
    above = maximum is not None and (value >= maximum if exclusive_maximum else value > maximum)
    if below or above:
        raise ValueError(f"{name} must be a finite number{text}, got {value!r}")
    return float(value)


def check_choice(name: str, value: object, choices: Sequence[Any]) -> Any:
    """Require ``value`` to be one of ``choices``.

    Example:
        >>> check_choice("reduction", "sum", REDUCTIONS)
        'sum'
    """
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_bool(name: str, value: object) -> bool:
    """Require a Python ``bool``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def check_reduction(reduction: object) -> str:
    return check_choice("reduction", reduction, REDUCTIONS)


# --- names renamed or removed in 0.2.0 ---------------------------------------------------

FunctionT = TypeVar("FunctionT", bound=Callable[..., Any])


def warn_renamed(old: str, new: str, note: str = "", stacklevel: int = 3) -> None:
    """Warn (``DeprecationWarning``) that ``old`` is 0.1's name of ``new``; ``note`` adds what changed."""
    warnings.warn(
        f"{old} was renamed {new} in 0.2.0; the old name will be removed" + (f". {note}" if note else ""),
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def renamed_keywords(
    renamed: Optional[Mapping[str, str]] = None,
    *,
    removed: Optional[Mapping[str, str]] = None,
    note: str = "",
) -> Callable[[FunctionT], FunctionT]:
    """Decorate a function so that 0.1's keyword names answer.

    Args:
        renamed: old keyword -> new keyword; an old keyword is forwarded to the new one
            with a ``DeprecationWarning`` (``note`` appended), and giving both is a
            ``TypeError``.
        removed: old keyword -> the ``TypeError`` message it raises; ``{value!r}`` in the
            message is replaced by the value given, so the message can show the call to
            write instead.
        note: what else changed with the renamed keywords (a silent behaviour change).

    Example:
        >>> @renamed_keywords({"size": "num_rows"})
        ... def table(num_rows: int = 1) -> int:
        ...     return num_rows
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     table(size=3)
        3
    """
    renamed = dict(renamed or {})
    removed = dict(removed or {})

    def decorate(function: FunctionT) -> FunctionT:
        owner = function.__qualname__.removesuffix(".__init__")

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, message in removed.items():
                if old in kwargs:
                    raise TypeError(f"{owner}(): " + message.format(value=kwargs[old]))
            for old, new in renamed.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{owner}() got both {old}= and {new}=: pass only {new}=")
                    warn_renamed(f"{owner}({old}=)", f"{new}=", note)
                    kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def _range_text(
    minimum: Optional[float],
    maximum: Optional[float],
    exclusive_minimum: bool = False,
    exclusive_maximum: bool = False,
) -> str:
    low = None if minimum is None else f"{'>' if exclusive_minimum else '>='} {minimum:g}"
    high = None if maximum is None else f"{'<' if exclusive_maximum else '<='} {maximum:g}"
    parts = [part for part in (low, high) if part]
    return (" " + " and ".join(parts)) if parts else ""


# --- tensor values --------------------------------------------------------------------


def reads_values_on_host(tensor: Tensor) -> bool:
    """Whether value checks may read ``tensor`` on the host: a CPU tensor, eager mode."""
    return tensor.device.type == "cpu" and not torch.compiler.is_compiling()


def require(condition: Tensor, like: Tensor, message: Callable[[], str], summary: str) -> None:
    """Raise ``ValueError(message())`` when the 0-dim bool ``condition`` is false.

    On the host path (see :func:`reads_values_on_host`) the condition is read and the
    detailed message is worked out only on failure; otherwise ``torch._assert_async``
    with ``summary`` checks it on the device without a synchronization. Meta tensors
    skip the check.
    """
    if like.device.type == "meta":
        return
    if reads_values_on_host(like):
        if not bool(condition):
            raise ValueError(message())
        return
    torch._assert_async(condition, summary)


def _check_floating(name: str, tensor: object) -> Tensor:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got dtype {tensor.dtype}")
    return tensor


def check_embeddings(name: str, tensor: object, minimum_rows: int = 1, nonzero_rows: bool = True) -> Tensor:
    """Require a floating ``(B, D)`` tensor, ``B >= minimum_rows``, with finite (non-zero) rows.

    A zero row has no direction to normalize to (``nonzero_rows=False`` allows it, for
    values that are not normalized); a row of finite but huge entries is fine
    (:func:`tase_loss._numerics.unit_rows` normalizes it safely).
    """
    tensor = _check_floating(name, tensor)
    if tensor.dim() != 2:
        raise ValueError(f"{name} must have shape (B, D), got {tuple(tensor.shape)}")
    if tensor.shape[1] == 0:
        raise ValueError(f"{name} must have at least one feature, got shape {tuple(tensor.shape)}")
    if tensor.shape[0] < minimum_rows:
        raise ValueError(
            f"{name} must hold at least {minimum_rows} row(s), got shape {tuple(tensor.shape)}"
        )
    if tensor.shape[0] == 0:
        return tensor
    # One (B,) reduction answers both questions: max |x| per row is NaN/Inf exactly when
    # the row is, and 0 exactly when the row is zero.
    low, high = torch.aminmax(tensor.detach().abs().amax(dim=1))
    ok = torch.isfinite(high) & (low > 0) if nonzero_rows else torch.isfinite(high)

    def message() -> str:
        if not bool(torch.isfinite(high)):
            return f"{name} contains NaN or Inf values"
        row = int((tensor.detach().abs().amax(dim=1) == 0).nonzero()[0, 0])
        return f"{name} has an all-zero row (row {row}), which has no direction to normalize"

    require(ok, tensor, message, f"{name} must be finite with no all-zero row")
    return tensor


UNIT_NORM_TOLERANCE = 1e-2
"""How far from 1 a row's norm may be in :func:`check_unit_rows` (rows stored in float16
and read back in float32 are about 1e-3 off)."""


def check_unit_rows(name: str, tensor: object, rows: Optional[Tensor] = None) -> Tensor:
    """Require a floating ``(n, D)`` tensor, ``D >= 1``, of finite rows with norm 1.

    One ``(n,)`` float32 norm reduction, a chunk of rows at a time (no copy of all rows),
    so it costs little beside an estimate of the same rows. ``rows``, an ``(n,)`` bool
    mask, limits the requirement to those rows (a bank's seen ones); errors name the
    row's index in ``tensor``.

    Example:
        >>> check_unit_rows("features", torch.eye(2)).shape
        torch.Size([2, 2])
        >>> check_unit_rows("features", 3 * torch.eye(2))
        Traceback (most recent call last):
        ...
        ValueError: features must hold unit rows (torch.nn.functional.normalize them); row 0 has norm 3
    """
    tensor = _check_floating(name, tensor)
    if tensor.dim() != 2 or tensor.shape[1] == 0:
        raise ValueError(f"{name} must have shape (n, D) with D >= 1, got {tuple(tensor.shape)}")
    # float32 norms of float16/bfloat16 rows too, a chunk of rows at a time (no full copy)
    wide = torch.promote_types(tensor.dtype, torch.float32)
    norms = torch.cat([torch.linalg.vector_norm(chunk.to(wide), dim=1) for chunk in tensor.detach().split(1 << 16)])
    off = ~((norms - 1).abs() <= UNIT_NORM_TOLERANCE)  # NaN norms count as off
    if rows is not None:
        off &= rows
    if bool(off.any()):
        if not bool(torch.isfinite(norms[off]).all()):
            raise ValueError(f"{name} contains NaN or Inf values")
        row = int(off.nonzero()[0, 0])
        raise ValueError(
            f"{name} must hold unit rows (torch.nn.functional.normalize them); "
            f"row {row} has norm {float(norms[row]):.4g}"
        )
    return tensor


def check_same_layout(name: str, tensor: Tensor, like_name: str, like: Tensor) -> None:
    """Require ``tensor`` to match ``like`` in feature size, dtype and device."""
    if tensor.shape[1] != like.shape[1]:
        raise ValueError(
            f"{name} has feature size {tensor.shape[1]} but {like_name} has {like.shape[1]}"
        )
    if tensor.dtype != like.dtype:
        raise TypeError(f"{name} has dtype {tensor.dtype} but {like_name} has {like.dtype}")
    if tensor.device != like.device:
        raise ValueError(f"{name} is on {tensor.device} but {like_name} is on {like.device}")


def check_same_shape(name: str, tensor: Tensor, like_name: str, like: Tensor) -> None:
    if tensor.shape != like.shape:
        raise ValueError(
            f"{name} has shape {tuple(tensor.shape)} but {like_name} has {tuple(like.shape)}"
        )
    check_same_layout(name, tensor, like_name, like)


def check_per_sample(
    name: str,
    value: object,
    batch_size: int,
    device: torch.device,
    low: float,
    high: float,
    exclusive_low: bool = False,
) -> Tensor:
    """Require a floating ``(batch_size,)`` tensor on ``device`` with values in the range."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a float or a torch.Tensor, got {type(value).__name__}")
    value = _check_floating(name, value)
    if value.shape != (batch_size,):
        raise ValueError(f"{name} must have shape ({batch_size},), got {tuple(value.shape)}")
    if value.device != device:
        raise ValueError(f"{name} is on {value.device} but the embeddings are on {device}")
    if value.numel() == 0:
        return value
    smallest, largest = torch.aminmax(value.detach())  # NaN propagates into both
    above = smallest > low if exclusive_low else smallest >= low
    relation = ">" if exclusive_low else ">="
    bounds = f"{relation} {low:g} and <= {high:g}"

    def message() -> str:
        if not bool(torch.isfinite(value.detach()).all()):
            return f"{name} contains NaN or Inf values"
        return f"{name} must be {bounds}, got values in [{float(smallest):.6g}, {float(largest):.6g}]"

    require(above & (largest <= high), value, message, f"{name} must be finite, {bounds}")
    return value


def check_temperature(temperature: object, batch_size: int, device: torch.device) -> None:
    """Require a float or a ``(batch_size,)`` tensor in ``[MIN_TEMPERATURE, MAX_TEMPERATURE]``."""
    if isinstance(temperature, Tensor):
        check_per_sample("temperature", temperature, batch_size, device, MIN_TEMPERATURE, MAX_TEMPERATURE)
        return
    check_base_temperature(temperature)


def check_base_temperature(temperature: object, name: str = "temperature") -> float:
    """Require a plain number in ``[MIN_TEMPERATURE, MAX_TEMPERATURE]`` (a constructor's)."""
    if isinstance(temperature, Tensor):
        raise TypeError(f"{name} must be a float here, got a tensor; pass per-sample tensors to the call")
    return check_real(name, temperature, MIN_TEMPERATURE, MAX_TEMPERATURE)


def check_weight(weight: object, batch_size: int, device: torch.device, reduction: str) -> None:
    """Require weights in ``[0, MAX_WEIGHT]`` whose sum can divide a weighted mean."""
    weight = check_per_sample("weight", weight, batch_size, device, 0.0, MAX_WEIGHT)
    if reduction == "mean" and batch_size:
        # Non-negative weights sum to 0 only if their maximum is 0.
        require(
            weight.detach().amax() > 0,
            weight,
            lambda: "weight sums to 0, so reduction='mean' is undefined",
            "weight sums to 0, so reduction='mean' is undefined",
        )


def _check_integer_vector(name: str, value: object, batch_size: Optional[int], batch_name: str) -> Tensor:
    """Require an int64/int32 ``(batch_size,)`` tensor (any length when ``None``).

    ``batch_size`` is the row count of ``batch_name``, so a mismatch names both tensors.
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of int64 or int32, got {type(value).__name__}")
    if value.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an int64 or int32 tensor, got dtype {value.dtype}")
    if value.dim() != 1:
        raise ValueError(f"{name} must have shape (B,), got {tuple(value.shape)}")
    if batch_size is not None and value.shape[0] != batch_size:
        raise ValueError(
            f"{name} has {value.shape[0]} entries but {batch_name} has {batch_size} rows: "
            f"{name} needs one entry per row of {batch_name}"
        )
    return value


def check_rows(name: str, tensor: object, batch_size: int, batch_name: str) -> Tensor:
    """Require a tensor of ``batch_size`` rows, one per row of ``batch_name``."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() == 0 or tensor.shape[0] != batch_size:
        rows = "no rows (0-dim)" if tensor.dim() == 0 else f"{tensor.shape[0]} rows"
        raise ValueError(
            f"{name} has {rows} but {batch_name} has {batch_size}: {name} needs one row per row of {batch_name}"
        )
    return tensor


def check_index(
    index: object, batch_size: Optional[int], num_samples: int, batch_name: str = "the batch"
) -> Tensor:
    """Require an integer ``(batch_size,)`` tensor of dataset indices in ``[0, num_samples)``.

    ``batch_size`` is the row count of ``batch_name`` (say ``"features"``), which a
    length mismatch names beside ``index``.

    Example:
        >>> check_index(torch.tensor([0, 3]), 2, num_samples=4)
        tensor([0, 3])
        >>> check_index(torch.tensor([0, 4]), 2, num_samples=4)
        Traceback (most recent call last):
        ...
        ValueError: index must lie in [0, 4), got values in [0, 4]
        >>> check_index(torch.tensor([0, 1, 2]), 2, num_samples=4, batch_name="features")
        Traceback (most recent call last):
        ...
        ValueError: index has 3 entries but features has 2 rows: index needs one entry per row of features
    """
    index = _check_integer_vector("index", index, batch_size, batch_name)
    if index.numel() == 0:
        return index
    smallest, largest = torch.aminmax(index)
    require(
        (smallest >= 0) & (largest < num_samples),
        index,
        lambda: f"index must lie in [0, {num_samples}), got values in [{int(smallest)}, {int(largest)}]",
        f"index must lie in [0, {num_samples})",
    )
    return index


def check_labels(
    name: str, labels: object, batch_size: int, device: torch.device, batch_name: str = "the batch"
) -> Tensor:
    """Require an integer ``(batch_size,)`` tensor on ``device``, one label per row of ``batch_name``."""
    labels = _check_integer_vector(name, labels, batch_size, batch_name)
    if labels.device != device:
        raise ValueError(f"{name} is on {labels.device} but the embeddings are on {device}")
    return labels


# --- state dicts ----------------------------------------------------------------------

StateSpec = dict[str, tuple[tuple[int, ...], Sequence[torch.dtype]]]


def check_state_dict(state: object, tensors: StateSpec, scalars: Sequence[str] = ()) -> None:
    """Require a ``state_dict`` with every key, each tensor of its shape and dtype family.

    Nothing is assigned here: callers validate the whole dict first, then assign, so a
    failing ``load_state_dict`` leaves the object as it was. Floating tensors must be
    finite.

    Args:
        state: the candidate ``state_dict``.
        tensors: key -> (shape, accepted dtypes).
        scalars: keys that must be present and hold a Python ``int``.
    """
    if not isinstance(state, dict):
        raise TypeError(f"state_dict must be a dict, got {type(state).__name__}")
    missing = sorted((set(tensors) | set(scalars)) - set(state))
    if missing:
        raise ValueError(f"state_dict is missing {missing}")
    for key, (shape, dtypes) in tensors.items():
        value = state[key]
        if not isinstance(value, Tensor):
            raise TypeError(f"state_dict[{key!r}] must be a torch.Tensor, got {type(value).__name__}")
        if value.dtype not in dtypes:
            raise TypeError(f"state_dict[{key!r}] has dtype {value.dtype}, expected one of {list(dtypes)}")
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"state_dict[{key!r}] has shape {tuple(value.shape)}, expected {tuple(shape)}")
        if value.is_floating_point() and value.numel() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"state_dict[{key!r}] contains NaN or Inf values")
    for key in scalars:
        value = state[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise TypeError(f"state_dict[{key!r}] must be an integer >= 0, got {value!r}")
