"""High-level entry points: load a model with its RFM and ask a question about an image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from lrsvqa.imagery.georef import GeoReference
from lrsvqa.imagery.pyramid import PyramidGeometry
from lrsvqa.models.adapter import LlavaAdapter
from lrsvqa.models.placement import DEFAULT_DEVICE, DEFAULT_DTYPE
from lrsvqa.models.rfm import RegionFocusModule
from lrsvqa.strategies.c2f import CoarseToFine, CoarseToFineConfig, CoarseToFineResult


@dataclass
class LoadedModel:
    """A model adapter and the RFM that guides it."""

    adapter: LlavaAdapter
    rfm: RegionFocusModule
    training_free: bool


def load_model(
    model: str | Path,
    rfm: str | Path | None = None,
    *,
    rfm_layers: list[int] | None = None,
    dtype: str = DEFAULT_DTYPE,
    device: str = DEFAULT_DEVICE,
    attn_implementation: str | None = None,
    device_map: str | None = None,
    hr_pool: int | None = None,
    pool_mode: str | None = None,
    newline: bool | None = None,
) -> LoadedModel:
    """Load a LLaVA checkpoint and a trained RFM, or the training-free RFM when none is given.

    Models are shared per process with the evaluation strategies (one copy in memory).

    Args:
        model: Checkpoint folder or hub id.
        rfm: RFM folder (``lrsvqa distill --out``) or hub id
            (``RegionFocusModule.from_pretrained``).
        rfm_layers: LLM layers for the training-free RFM (default: scaled (1, 5, 11, 14)).
        dtype: Weight dtype name (``float32``, ``bfloat16``, ``float16``, ``auto``).
        device: Torch device or ``auto`` (CUDA, then MPS, then the CPU).
        attn_implementation: Attention kernel transformers uses (None: its choice).
        device_map: transformers ``device_map`` (e.g. ``auto``); replaces ``device``.
        hr_pool: Pooling stride of the high-resolution tiles (None: the checkpoint's).
        pool_mode: How they are pooled (None: the checkpoint's).
        newline: False feeds no row-end tokens (None: the model's own).
    """
    from lrsvqa.strategies.builtin import shared_adapter, shared_rfm

    if rfm is not None:
        RegionFocusModule.check_source(rfm)  # a mistyped --rfm fails before the model loads
    adapter = shared_adapter(
        model,
        dtype,
        device,
        attn_implementation=attn_implementation,
        device_map=device_map,
        hr_pool=hr_pool,
        pool_mode=pool_mode,
        newline=newline,
    )
    return LoadedModel(adapter, shared_rfm(adapter, rfm, rfm_layers), training_free=rfm is None)


def ask(
    loaded: LoadedModel,
    image: str | Path,
    question: str,
    config: CoarseToFineConfig | None = None,
    *,
    min_short_side: int = 1008,
    **reader_options,
) -> tuple[CoarseToFineResult, object]:
    """Answer ``question`` about ``image`` with coarse-to-fine inference.

    Returns:
        The result (answer + trace) and the opened ``PyramidReader`` (for overlays).
    """
    from lrsvqa.imagery.tiles import PyramidReader

    reader = PyramidReader.open(
        image, tile_size=loaded.adapter.tile_size, min_short_side=min_short_side, **reader_options
    )
    c2f = CoarseToFine(loaded.adapter, loaded.rfm, config or CoarseToFineConfig())
    return c2f.run(reader, question), reader


def trace_geojson(
    result: CoarseToFineResult,
    geometry: PyramidGeometry,
    georef: GeoReference,
    tokens_per_side: int,
) -> dict[str, Any]:
    """Where c2f looked, as a GeoJSON FeatureCollection in the image's CRS.

    One polygon per tile encoded at each level (``kind="tile"``, its share of the
    level's RFM score) and per retained token (``kind="token"``, its score), with the
    level (1 = coarsest) and grid position. Coordinates are map coordinates through
    the image's geotransform, or pixel ``(column, row)`` where it has none; an EPSG
    CRS is named in the (pre-RFC 7946) ``crs`` member that QGIS and GDAL read, and a CRS
    without an EPSG code is given as WKT in a ``crs_wkt`` member.
    """
    features = []
    for trace in result.levels:
        level = geometry.levels[trace.level - 1]
        scores = trace.tile_scores or [None] * len(trace.tiles_encoded)
        for (row, col), score in zip(trace.tiles_encoded, scores, strict=True):
            features.append(
                _feature(
                    georef.box_ring(level.tile_image_box(row, col)),
                    {
                        "kind": "tile",
                        "level": trace.level,
                        "row": row,
                        "col": col,
                        "score": score,
                        "decision": trace.decision,
                    },
                )  # fmt: skip
            )
    final = geometry.levels[result.final_level - 1]
    scores = result.retained_scores or [None] * len(result.retained_positions)
    for (row, col), score in zip(result.retained_positions, scores, strict=True):
        box = final.token_image_box(row, col, tokens_per_side)
        features.append(
            _feature(
                georef.box_ring(box),
                {
                    "kind": "token",
                    "level": result.final_level,
                    "row": row,
                    "col": col,
                    "score": score,
                },
            )  # fmt: skip
        )
    collection: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    if georef.epsg is not None:
        name = f"urn:ogc:def:crs:EPSG::{georef.epsg}"
        collection["crs"] = {"type": "name", "properties": {"name": name}}
    elif georef.crs_wkt is not None:
        collection["crs_wkt"] = georef.crs_wkt  # a CRS without an EPSG code, as GDAL wrote it
    collection["coordinates"] = "map" if georef.geotransform is not None else "pixel"
    return collection


def _feature(ring: list[list[float]], properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": properties,
    }


def trace_rows(result: CoarseToFineResult) -> tuple[list[str], list[list[str]]]:
    """The per-level trace as a header and rows (for the table and CSV)."""
    header = [
        "level",
        "downsample",
        "grid",
        "tiles encoded / available",
        "tokens encoded",
        "tokens kept",
        "decision",
    ]
    rows = [
        [
            str(level.level),
            f"1/{level.downsample:.4g}",
            f"{level.grid[0]}x{level.grid[1]}",
            f"{len(level.tiles_encoded)} / {level.tiles_available}",
            str(level.tokens_encoded),
            str(level.tokens_kept),
            level.decision,
        ]
        for level in result.levels
    ]
    return header, rows


def trace_table(result: CoarseToFineResult) -> Table:
    """The per-level trace as a rich table."""
    header, rows = trace_rows(result)
    table = Table(*header, title="coarse-to-fine trace")
    for row in rows:
        table.add_row(*row)
    table.caption = (
        f"vision tokens encoded {result.vision_tokens_encoded}, "
        f"to LLM {result.vision_tokens_to_llm} (thumbnail {result.thumbnail_tokens} + "
        f"retained {result.retained_tokens}), sequence {result.sequence_length}"
    )
    return table
