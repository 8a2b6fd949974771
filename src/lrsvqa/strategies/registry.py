"""Strategies by name, so ``lrsvqa eval --strategy NAME`` can drive any method.

A module that implements a strategy registers a factory at import time::

    register_strategy("c2f", make_c2f)

and the evaluation runner builds it with :func:`build_strategy`. Factories take
keyword options only; the ``eval`` command passes these (each only when given):

* ``model_path`` (``--model``): checkpoint directory or hub-style path,
* ``rfm_path`` (``--rfm``): Region Focus Module weights,
* ``device`` (``--device``): e.g. ``"cpu"``, ``"cuda:1"``,
* ``dtype`` (``--dtype``): e.g. ``"float16"``,
* any ``--strategy-option key=value`` pair, the value decoded as JSON when it parses
  (``0.25``, ``true``, ``[7, 14]``) and kept as a string otherwise.

Strategies living in modules of the :mod:`lrsvqa.strategies` package need no explicit
import: the first lookup of an unknown name imports every module of the package,
so their ``register_strategy`` calls run.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from lrsvqa.strategies.base import Strategy

StrategyFactory = Callable[..., Strategy]

_FACTORIES: dict[str, StrategyFactory] = {}
_IMPORT_FAILURES: dict[str, str] = {}
_PACKAGE_SCANNED = False


def register_strategy(name: str, factory: StrategyFactory, *, replace: bool = False) -> None:
    """Make ``factory`` buildable as ``name``.

    Args:
        name: Name used on the command line (``--strategy NAME``).
        factory: Callable taking keyword options and returning a :class:`Strategy`.
        replace: Allow overriding an existing registration (tests, notebooks); without
            it a second registration under the same name is an error, because two
            modules silently fighting over a name would make results unattributable.

    Raises:
        ValueError: ``name`` is empty or already registered to another factory.
    """
    if not name:
        raise ValueError("strategy name must be non-empty")
    current = _FACTORIES.get(name)
    if current is not None and current is not factory and not replace:
        raise ValueError(f"strategy {name!r} is already registered ({current!r})")
    _FACTORIES[name] = factory


def available_strategies() -> list[str]:
    """Sorted names of every registered strategy (after scanning the package)."""
    _scan_package()
    return sorted(_FACTORIES)


def build_strategy(name: str, **options: Any) -> Strategy:
    """Build the strategy registered as ``name`` with keyword ``options``.

    Raises:
        KeyError: No strategy of that name; the message lists the known names and
            any module of :mod:`lrsvqa.strategies` that failed to import (it may be the
            one that would have registered ``name``).
    """
    if name not in _FACTORIES:
        _scan_package()
    factory = _FACTORIES.get(name)
    if factory is None:
        known = ", ".join(sorted(_FACTORIES)) or "none"
        message = f"unknown strategy {name!r}; registered: {known}"
        if _IMPORT_FAILURES:
            failed = "; ".join(f"{mod}: {err}" for mod, err in sorted(_IMPORT_FAILURES.items()))
            message += f". Modules that failed to import: {failed}"
        raise KeyError(message)
    return factory(**options)


def _scan_package() -> None:
    """Import every module of :mod:`lrsvqa.strategies` once, so they can register.

    A module that fails to import is remembered rather than raised: one broken or
    optional-dependency strategy must not make every other strategy unusable.
    """
    global _PACKAGE_SCANNED
    if _PACKAGE_SCANNED:
        return
    _PACKAGE_SCANNED = True
    package = importlib.import_module("lrsvqa.strategies")
    for module in pkgutil.iter_modules(package.__path__, prefix="lrsvqa.strategies."):
        try:
            importlib.import_module(module.name)
        except Exception as exc:  # reported by build_strategy
            _IMPORT_FAILURES[module.name] = f"{type(exc).__name__}: {exc}"
