"""The one list of strategies: how each is built, what options it takes, what it costs.

Every entry holds the strategy's factory, a frozen dataclass of its options (each
default declared there once, checked in ``__post_init__``) and its token counter, so
``lrsvqa eval``, ``lrsvqa flops`` and ``lrsvqa strategies`` read the same list and
cannot disagree. A module registers at import time::

    register_strategy("fastv", make_fastv, options=FastVOptions, counter=count_fastv)

Options arrive as a flat mapping (``--strategy-option key=value`` strings from the CLI,
typed values from Python) and are split by :func:`parse_options` into the
:class:`ModelOptions` every strategy shares and the strategy's own dataclass, each
value converted by the field's declared type. Strategies living in modules of the
:mod:`lrsvqa.strategies` package need no explicit import: the first lookup imports
every module of the package, so their ``register_strategy`` calls run.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pkgutil
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lrsvqa.budgets import DEFAULT_MAX_NEW_TOKENS
from lrsvqa.flops import ModelDims, TokenCount
from lrsvqa.models.placement import DEFAULT_DEVICE, DEFAULT_DTYPE
from lrsvqa.strategies.base import Strategy


def option(default: Any, help: str) -> Any:  # noqa: A002 - the listing's column name
    """A dataclass field with its default and the help line ``lrsvqa strategies`` shows."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ModelOptions:
    """How to load the model, shared by every strategy (``lrsvqa eval --model ...``)."""

    model_path: str | None = option(None, "LLaVA checkpoint folder or hub id (--model).")
    device: str = option(DEFAULT_DEVICE, "Torch device, e.g. cuda:1; auto: CUDA, MPS, CPU.")
    dtype: str = option(DEFAULT_DTYPE, "Model dtype, e.g. float16; auto: the checkpoint's on GPU.")
    attn_implementation: str | None = option(
        None, "sdpa, eager, flash_attention_2, ... (none: transformers' choice)."
    )
    device_map: str | None = option(None, "transformers device_map, e.g. auto (then no device).")
    max_new_tokens: int = option(DEFAULT_MAX_NEW_TOKENS, "Generation budget.")
    hr_pool: int | None = option(
        None, "Pool each high-res tile's tokens by this stride (2 = the paper's; none: config)."
    )
    hr_pool_mode: str | None = option(None, "bilinear, average or max (none: the config's).")
    newline: bool | None = option(None, "Row-end tokens (false: none; none: the model's own).")
    bands: tuple[int, ...] | None = option(
        None,
        "Bands shown as R, G, B (or one as grey), 1-based as in GDAL, e.g. 4,3,2 "
        "(--bands; none: the ones the file calls red, green, blue).",
    )

    def __post_init__(self) -> None:
        if self.bands is not None and (
            len(self.bands) not in (1, 3) or any(b < 1 for b in self.bands)
        ):
            raise ValueError(
                f"bands must be 1 (grey) or 3 (R, G, B) band numbers counted from 1 as in "
                f"GDAL, got {','.join(map(str, self.bands))}"
            )
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.hr_pool is not None and self.hr_pool < 1:
            raise ValueError(f"hr_pool must be >= 1, got {self.hr_pool}")


@dataclass(frozen=True)
class NoOptions:
    """Options of a strategy that has none of its own."""


@dataclass(frozen=True)
class CountInput:
    """What a token counter needs besides the strategy's options.

    Attributes:
        dims: The model's dimensions.
        height: Image height, px.
        width: Image width, px.
        tiles_per_level: Coarse-to-fine only: mean tiles encoded at each level below the
            first (it depends on the question; measured by ``lrsvqa eval``).
    """

    dims: ModelDims
    height: int
    width: int
    tiles_per_level: tuple[float, ...] | None = None


Factory = Callable[[ModelOptions, Any], Strategy]
Counter = Callable[[CountInput, Any], TokenCount]


@dataclass(frozen=True)
class StrategyEntry:
    """One registered strategy.

    Attributes:
        name: Name used on the command line (``--strategy NAME``).
        factory: ``factory(model_options, options)`` returning the :class:`Strategy`.
        options: Frozen dataclass of the strategy's own options.
        counter: ``counter(count_input, options)`` returning the tokens the strategy
            feeds the vision encoder, the LLM and the RFM.
        summary: One line for the listing.
    """

    name: str
    factory: Factory
    options: type
    counter: Counter
    summary: str = ""

    @property
    def option_names(self) -> set[str]:
        """Names of the strategy's own options."""
        return _field_names(self.options)

    def parse(self, values: Mapping[str, Any]) -> tuple[ModelOptions, Any]:
        """:func:`parse_options` for this strategy."""
        return parse_options(self.name, self.options, values)

    def build(self, **values: Any) -> Strategy:
        """Build the strategy from flat options (model ones included).

        Raises:
            ValueError: An unknown or badly typed option (or one the factory refuses,
                e.g. no model path).
        """
        model, options = self.parse(values)
        return self.factory(model, options)

    def count(self, image: CountInput, **values: Any) -> TokenCount:
        """Token counts on ``image`` under the given options (model ones ignored)."""
        _, options = self.parse(values)
        return self.counter(image, options)


_ENTRIES: dict[str, StrategyEntry] = {}
_IMPORT_FAILURES: dict[str, str] = {}
_PACKAGE_SCANNED = False


def register_strategy(
    name: str,
    factory: Factory,
    *,
    options: type = NoOptions,
    counter: Counter,
    summary: str = "",
    replace: bool = False,
) -> None:
    """Make ``factory`` buildable, countable and listed as ``name``.

    Args:
        name: Name used on the command line.
        factory: ``factory(model_options, options)`` returning a :class:`Strategy`.
        options: Frozen dataclass of the strategy's own options, every field defaulted.
        counter: ``counter(count_input, options)`` returning a :class:`TokenCount`.
        summary: One line for ``lrsvqa strategies``.
        replace: Allow overriding an existing registration (tests, notebooks); without
            it a second registration under the same name is an error, because two
            modules silently fighting over a name would make results unattributable.

    Raises:
        ValueError: Empty name, options that are not a frozen dataclass with defaults
            (or that shadow a model option), or a name registered to another factory.
    """
    if not name:
        raise ValueError("strategy name must be non-empty")
    if not dataclasses.is_dataclass(options) or not options.__dataclass_params__.frozen:
        raise ValueError(f"strategy {name!r}: options must be a frozen dataclass")
    try:
        options()
    except TypeError as error:
        raise ValueError(f"strategy {name!r}: every option needs a default ({error})") from None
    shadowed = _field_names(options) & _field_names(ModelOptions)
    if shadowed:
        raise ValueError(f"strategy {name!r}: options {sorted(shadowed)} are model options")
    current = _ENTRIES.get(name)
    if current is not None and current.factory is not factory and not replace:
        raise ValueError(f"strategy {name!r} is already registered ({current.factory!r})")
    _ENTRIES[name] = StrategyEntry(name, factory, options, counter, summary)


def available_strategies() -> list[str]:
    """Sorted names of every registered strategy (after scanning the package)."""
    _scan_package()
    return sorted(_ENTRIES)


def strategy_entry(name: str) -> StrategyEntry:
    """The entry registered as ``name``.

    Raises:
        KeyError: No strategy of that name; the message lists the known names and
            any module of :mod:`lrsvqa.strategies` that failed to import (it may be the
            one that would have registered ``name``).
    """
    if name not in _ENTRIES:
        _scan_package()
    entry = _ENTRIES.get(name)
    if entry is None:
        known = ", ".join(sorted(_ENTRIES)) or "none"
        message = f"unknown strategy {name!r}; registered: {known}"
        if _IMPORT_FAILURES:
            failed = "; ".join(f"{mod}: {err}" for mod, err in sorted(_IMPORT_FAILURES.items()))
            message += f". Modules that failed to import: {failed}"
        raise KeyError(message)
    return entry


def build_strategy(name: str, **options: Any) -> Strategy:
    """Build the strategy registered as ``name`` from flat ``options``."""
    return strategy_entry(name).build(**options)


def count_strategy(
    name: str,
    dims: ModelDims,
    height: int,
    width: int,
    tiles_per_level: Sequence[float] | None = None,
    **options: Any,
) -> TokenCount:
    """Token counts of strategy ``name`` on a ``height x width`` image with ``options``."""
    levels = None if tiles_per_level is None else tuple(float(t) for t in tiles_per_level)
    image = CountInput(dims, height, width, levels)
    return strategy_entry(name).count(image, **options)


def flops_table(
    dims: ModelDims,
    height: int,
    width: int,
    strategies: Sequence[str],
    options: Mapping[str, Mapping[str, Any]] | None = None,
    tiles_per_level: Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """One row per strategy (tokens encoded, tokens to the LLM, TFLOPs).

    Args:
        dims: The model's dimensions.
        height: Image height, px.
        width: Image width, px.
        strategies: Registered names, one row each.
        options: Per strategy name, its options (defaults where absent).
        tiles_per_level: Coarse-to-fine's mean tiles per level below the first.
    """
    rows = []
    for name in strategies:
        own = (options or {}).get(name, {})
        count = count_strategy(name, dims, height, width, tiles_per_level, **own)
        rows.append(
            {
                "strategy": name,
                "vision_tokens_encoded": count.vision_tokens_encoded,
                "vision_tokens_to_llm": count.tokens_to_llm,
                "tflops": count.tflops(dims),
            }
        )
    return rows


# ---------------------------------------------------------------------- options
def parse_options(owner: str, cls: type, values: Mapping[str, Any]) -> tuple[ModelOptions, Any]:
    """Split flat ``values`` into :class:`ModelOptions` and ``cls``, converting each value.

    Strings (``key=value`` from the command line) are converted by the field's declared
    type: ``int``, ``float``, ``bool`` (true/false, yes/no, 1/0), ``str``,
    ``tuple[T, ...]`` (``7,14,21`` or ``[7, 14, 21]``) and ``T | None`` (``none``).
    Typed values from Python are checked against the same types.

    Raises:
        ValueError: One line naming the strategy and the option: unknown, not of its
            type, or refused by the dataclass's own checks.
    """
    model_fields, own_fields = _field_names(ModelOptions), _field_names(cls)
    model_values, own_values = {}, {}
    for key, value in values.items():
        if key in model_fields:
            model_values[key] = value
        elif key in own_fields:
            own_values[key] = value
        else:
            known = ", ".join(sorted(own_fields)) or "none of its own"
            raise ValueError(f"strategy {owner!r} has no option {key!r} (its options: {known})")
    return (
        _instantiate(owner, ModelOptions, model_values),
        _instantiate(owner, cls, own_values),
    )


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _instantiate(owner: str, cls: type, values: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    converted = {}
    for key, value in values.items():
        try:
            converted[key] = convert_value(hints[key], value)
        except ValueError as error:
            raise ValueError(f"strategy {owner!r}: option {key!r} {error}") from None
    try:
        return cls(**converted)
    except (TypeError, ValueError) as error:
        raise ValueError(f"strategy {owner!r}: {_one_line(error)}") from None


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_NONE = ("none", "null", "")


def convert_value(annotation: Any, value: Any) -> Any:
    """``value`` as the type ``annotation`` declares (see :func:`parse_options`).

    Raises:
        ValueError: ``"expects TYPE, got VALUE"``.
    """
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [arg for arg in args if arg is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            if len(inner) < len(args):
                return None
        if len(inner) != 1:
            raise ValueError(f"has an unsupported type {annotation}")
        return convert_value(inner[0], value)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        items = value
        if isinstance(value, str):
            text = value.strip()
            try:
                items = json.loads(text) if text.startswith("[") else text.split(",")
            except json.JSONDecodeError:
                items = None
            items = [i.strip() if isinstance(i, str) else i for i in items or [None]]
            items = [i for i in items if i != ""]
        if not isinstance(items, list | tuple):
            raise ValueError(f"expects a comma-separated list, got {value!r}")
        try:
            return tuple(convert_value(args[0], item) for item in items)
        except ValueError:
            raise ValueError(f"expects a list of {args[0].__name__}, got {value!r}") from None
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"expects true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError(f"expects an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ValueError(f"expects a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str | os.PathLike):
            return os.fspath(value)
        raise ValueError(f"expects text, got {value!r}")
    raise ValueError(f"has an unsupported type {annotation}")


# ---------------------------------------------------------------------- listing
def describe_strategies() -> list[dict[str, Any]]:
    """Every strategy with its options (name, type, default, help), for the listing.

    The model options every strategy shares come first, under the name ``(model)``.
    """
    summary = "Options of every strategy: which model to load and how."
    rows = [{"name": "(model)", "summary": summary, "options": _describe(ModelOptions)}]
    for name in available_strategies():
        entry = _ENTRIES[name]
        rows.append({"name": name, "summary": entry.summary, "options": _describe(entry.options)})
    return rows


def _describe(cls: type) -> list[dict[str, Any]]:
    defaults = cls()
    return [
        {
            "name": f.name,
            "type": _type_name(f.type),
            "default": getattr(defaults, f.name),
            "help": f.metadata.get("help", ""),
        }
        for f in dataclasses.fields(cls)
    ]


def _type_name(annotation: Any) -> str:
    """An annotation as written (``int``, ``tuple[int, ...] | None``), string or not."""
    if isinstance(annotation, str):
        return annotation
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


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
        except Exception as exc:  # reported by strategy_entry
            _IMPORT_FAILURES[module.name] = f"{type(exc).__name__}: {exc}"
