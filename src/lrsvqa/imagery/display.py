"""Human-facing views of a pyramid: a rich table of its levels and a tile-grid overlay."""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from rich.table import Table

from lrsvqa.imagery.reader import LargeImage
from lrsvqa.imagery.tiles import PyramidReader

_PANEL_INCHES = 4.0


def _size(hw: tuple[int, int]) -> str:
    return f"{hw[0]}x{hw[1]}"


def pyramid_table(reader: PyramidReader) -> Table:
    """One row per DIP layer: sizes, tile grid, scale ``r_p`` and the stored level read.

    Layers are numbered as in the paper: the thumbnail, then levels 1..P coarse to fine.
    """
    image, geometry = reader.image, reader.geometry
    whole = (0.0, 0.0, float(image.width), float(image.height))
    table = Table(
        title=(
            f"{image.name}: {_size((image.height, image.width))} px, "
            f"{image.num_bands} x {image.dtype}, B={geometry.tile_size}"
        )
    )
    for header in ("layer", "factor", "size HxW", "resized", "grid", "tiles", "r_p"):
        table.add_column(header, justify="right")
    table.add_column("read from", justify="right")
    thumb = geometry.thumbnail
    source = image.level_sizes[image.source_level(whole, thumb.resized_size)]
    table.add_row(
        "thumb", "-", _size((image.height, image.width)), _size(thumb.resized_size), "1x1", "1",
        "-", _size(source),
    )  # fmt: skip
    for level in geometry.levels:
        rows, cols = level.grid
        source = image.level_sizes[image.source_level(whole, level.resized_size)]
        table.add_row(
            str(level.index + 1), f"{level.downsample:.4g}", _size((level.height, level.width)),
            _size(level.resized_size), f"{rows}x{cols}", str(level.num_tiles),
            f"{level.scale:.4f}", _size(source),
        )  # fmt: skip
    return table


def georef_lines(image: LargeImage) -> list[str]:
    """Where the image lies and which bands are shown, one fact per line."""
    georef = image.georef
    lines = [f"CRS: {georef.crs or 'none'}" + (f" ({georef.crs_name})" if georef.crs_name else "")]
    if georef.geotransform is None:
        lines.append("geotransform: none (coordinates are pixels)")
    else:
        lines.append(f"geotransform: {', '.join(f'{v:.10g}' for v in georef.geotransform)}")
    lines.append(f"nodata: {'none' if georef.nodata is None else f'{georef.nodata:g}'}")
    for band in range(image.num_bands):
        colour = georef.colours[band] if band < len(georef.colours) else None
        text = georef.descriptions[band] if band < len(georef.descriptions) else None
        lines.append(f"band {band + 1}: {colour or 'undefined'}" + (f", {text}" if text else ""))
    lines.append(f"shown as R, G, B: bands {', '.join(str(b) for b in image.bands)}")
    if image.band_notice:
        lines.append(f"notice: {image.band_notice}")
    return lines


def save_grid_overlay(
    reader: PyramidReader, path: str | PathLike[str], preview_side: int = 512
) -> Path:
    """Write a PNG with one panel per layer: its canvas with the tile grid drawn on top.

    Each panel is the level's padded canvas shrunk to ``preview_side`` px, read from the
    coarsest adequate overview, so this is cheap even for 27k px images.

    Args:
        reader: The pyramid to draw.
        path: Output PNG.
        preview_side: Longer side of each panel in pixels.

    Returns:
        The output path.
    """
    geometry = reader.geometry
    panels = [("thumbnail", reader.thumbnail(), geometry.tile_size, 1.0)]
    for level in geometry.levels:
        canvas = reader.level_image(level.index, max_side=preview_side)
        factor = canvas.shape[1] / level.canvas_size[1]
        rows, cols = level.grid
        title = f"level {level.index + 1}: {rows} x {cols} tiles, r_p={level.scale:.3f}"
        panels.append((title, canvas, geometry.tile_size, factor))
    figure = Figure(figsize=(_PANEL_INCHES * len(panels), _PANEL_INCHES), layout="constrained")
    for axes, (title, canvas, tile, factor) in zip(
        figure.subplots(1, len(panels), squeeze=False)[0], panels, strict=True
    ):
        height, width = canvas.shape[:2]
        axes.imshow(canvas, interpolation="nearest")
        step = tile * factor
        lines = {"colors": "red", "linewidths": 0.8}
        axes.vlines(np.arange(0, width + step / 2, step) - 0.5, -0.5, height - 0.5, **lines)
        axes.hlines(np.arange(0, height + step / 2, step) - 0.5, -0.5, width - 0.5, **lines)
        axes.set_title(title, fontsize=9)
        axes.set_axis_off()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # One preview pixel per figure pixel: 4 inches at 128 dpi is 512 px.
    figure.savefig(path, dpi=preview_side / _PANEL_INCHES)
    return path
