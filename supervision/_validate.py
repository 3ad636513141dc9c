"""Argument checks shared by the value objects: each names the field and what it expects."""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any


def positive(owner: str, name: str, value: float) -> None:
    """Require a number > 0 (``math.inf`` allowed)."""
    number(owner, name, value)
    if not value > 0:
        raise ValueError(f"{owner}.{name} must be > 0, got {value!r}")


def non_negative(owner: str, name: str, value: float) -> None:
    """Require a finite number >= 0."""
    number(owner, name, value)
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{owner}.{name} must be a finite number >= 0, got {value!r}")


def number(owner: str, name: str, value: object) -> None:
    """Require an int or float (not a bool, not NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{owner}.{name} must be a number, got {type(value).__name__}")
    if math.isnan(value):
        raise ValueError(f"{owner}.{name} must be a number, got NaN")


def count(owner: str, name: str, value: object, *, minimum: int) -> None:
    """Require an int >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}.{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{owner}.{name} must be >= {minimum}, got {value}")


def is_async_callable(fn: Any) -> bool:
    """True for an async function, a partial of one, or an object with an async __call__."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - we need the bound __call__ itself
    return call is not None and inspect.iscoroutinefunction(call)
