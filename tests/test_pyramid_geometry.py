"""DIP geometry (paper section 4.1.1): hand-computed cases and properties for all sizes."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lrsvqa.imagery.pyramid import Level, PyramidGeometry, build_pyramid, level_sizes

B = 336
SIDES = st.integers(min_value=1, max_value=30_000)
TOKENS = 24  # CLIP-L/14 at 336 px


# Tile grids (rows, cols) coarse to fine, from the rule, for WIDTH x HEIGHT images.
PINNED_GRIDS = {
    "official": {
        (8000, 2000): [(1, 3), (2, 6), (3, 12), (6, 24)],
        (27_328, 3000): [(1, 3), (1, 6), (2, 11), (3, 21), (5, 41), (9, 82)],
        (1024, 768): [(3, 3), (3, 4)],
        (4000, 4000): [(3, 3), (6, 6), (12, 12)],
        (27_328, 600): [(1, 3), (1, 6), (1, 11), (1, 21), (1, 41), (2, 82)],
        (500, 300): [(1, 2)],
    },
    "paper-text": {
        (8000, 2000): [(3, 12), (6, 24)],
        (27_328, 3000): [(3, 21), (5, 41), (9, 82)],
        (1024, 768): [(3, 4)],
        (4000, 4000): [(3, 3), (6, 6), (12, 12)],
        (27_328, 600): [(2, 82)],
        (500, 300): [(1, 2)],
    },
}


@pytest.mark.parametrize(
    ("rule", "width", "height"),
    [(rule, w, h) for rule, grids in PINNED_GRIDS.items() for (w, h) in grids],
)
def test_pinned_level_grids_of_both_dip_rules(rule: str, width: int, height: int) -> None:
    geometry = build_pyramid(height, width, dip_rule=rule)
    assert [lv.grid for lv in geometry.levels] == PINNED_GRIDS[rule][(width, height)]


def test_official_rule_is_the_default_and_ends_on_a_1008_long_side() -> None:
    assert build_pyramid(3000, 27_328) == build_pyramid(3000, 27_328, dip_rule="official")
    coarsest = build_pyramid(3000, 27_328).levels[0]
    assert (coarsest.height, coarsest.width) == (111, 1008)
    assert coarsest.downsample == pytest.approx(27_328 / 1008)
    with pytest.raises(ValueError, match="unknown DIP rule"):
        build_pyramid(3000, 27_328, dip_rule="short-side")


def test_4000_square_has_three_levels_of_3_6_12_tiles() -> None:
    geometry = build_pyramid(4000, 4000, dip_rule="paper-text")
    assert [(lv.height, lv.width) for lv in geometry.levels] == [
        (1000, 1000),
        (2000, 2000),
        (4000, 4000),
    ]
    assert [lv.downsample for lv in geometry.levels] == [4, 2, 1]
    assert [lv.grid for lv in geometry.levels] == [(3, 3), (6, 6), (12, 12)]
    assert [lv.num_tiles for lv in geometry.levels] == [9, 36, 144]
    # eq. 3: r = min(3 * 336 / 1000, 3 * 336 / 1000) = 1.008 on every level.
    assert [lv.scale for lv in geometry.levels] == pytest.approx([1.008, 1.008, 1.008])
    assert [lv.resized_size for lv in geometry.levels] == [
        (1008, 1008),
        (2016, 2016),
        (4032, 4032),
    ]
    assert all(lv.padding == (0, 0) for lv in geometry.levels)


@pytest.mark.parametrize("rule", ["official", "paper-text"])
def test_2016_square_gives_two_levels_the_papers_3_layer_dip(rule: str) -> None:
    geometry = build_pyramid(2016, 2016, dip_rule=rule)
    assert geometry.num_levels == 2  # + thumbnail = 3 layers
    assert [(lv.height, lv.grid, lv.scale) for lv in geometry.levels] == [
        (1008, (3, 3), 1.0),
        (2016, (6, 6), 1.0),
    ]


def test_27328_square_halves_five_times() -> None:
    geometry = build_pyramid(27_328, 27_328, dip_rule="paper-text")
    assert [lv.height for lv in geometry.levels] == [854, 1708, 3416, 6832, 13664, 27328]
    assert [lv.grid[0] for lv in geometry.levels] == [3, 6, 11, 21, 41, 82]
    assert geometry.levels[0].scale == pytest.approx(1008 / 854)
    assert geometry.levels[-1].scale == pytest.approx(27_552 / 27_328)


def test_extreme_strip_27328_by_600_is_one_level() -> None:
    (level,) = build_pyramid(27_328, 600, dip_rule="paper-text").levels
    assert level.grid == (82, 2)
    # r = min(82 * 336 / 27328, 2 * 336 / 600) = min(1.0082, 1.12)
    assert level.scale == pytest.approx(27_552 / 27_328)
    assert level.resized_size == (27_552, 605)  # 600 * 1.0082 = 604.92
    assert level.padding == (0, 67)


def test_small_image_is_stretched_to_one_tile_with_padding() -> None:
    (level,) = build_pyramid(100, 50).levels
    assert level.grid == (1, 1)
    assert level.scale == pytest.approx(3.36)
    assert level.resized_size == (336, 168)
    assert level.padding == (0, 168)


def test_thumbnail_long_side_is_the_tile() -> None:
    thumb = build_pyramid(3000, 6000).thumbnail
    assert thumb.resized_size == (168, 336)
    assert thumb.padding == (168, 0)


@pytest.mark.parametrize(("h", "w", "mss"), [(0, 5, 1008), (5, 0, 1008), (5, 5, 0)])
def test_level_sizes_rejects_bad_sizes(h: int, w: int, mss: int) -> None:
    with pytest.raises(ValueError):
        level_sizes(h, w, mss)


def test_tile_outside_grid_raises() -> None:
    level = build_pyramid(1000, 1000).levels[0]
    with pytest.raises(IndexError):
        level.tile_canvas_box(3, 0)


def test_next_level_tiles_of_finest_level_raises() -> None:
    geometry = build_pyramid(4000, 4000)
    with pytest.raises(IndexError):
        geometry.next_level_tiles(2, [(0, 0)], TOKENS)


def _intervals_tile_exactly(edges: list[tuple[float, float]], total: int) -> bool:
    """Consecutive, positive-length intervals from 0 to ``total``."""
    if edges[0][0] != 0 or edges[-1][1] != pytest.approx(total, abs=1e-9):
        return False
    return all(a1 == b0 for (_, a1), (b0, _) in zip(edges, edges[1:], strict=False)) and all(
        e1 > e0 for e0, e1 in edges
    )


def _check_level(level: Level, h: int, w: int) -> None:
    rows, cols = level.grid
    assert rows == math.ceil(level.height / B) and cols == math.ceil(level.width / B)
    assert level.scale == min(rows * B / level.height, cols * B / level.width) >= 1.0
    rh, rw = level.resized_size
    ch, cw = level.canvas_size
    assert (ch, cw) == (rows * B, cols * B)
    assert 1 <= rh <= ch and 1 <= rw <= cw
    assert rh == ch or rw == cw, "one side must fill whole tiles (eq. 3)"
    assert abs(rh - level.height * level.scale) <= 0.5 + 1e-9
    assert abs(rw - level.width * level.scale) <= 0.5 + 1e-9
    assert 0 <= level.padding[0] < B and 0 <= level.padding[1] < B
    # No tile is padding only, and tile image boxes tile the image exactly.
    assert all(level.tile_has_content(r, c) for r, c in [(rows - 1, 0), (0, cols - 1)])
    y_edges = [level.tile_image_box(r, 0)[1::2] for r in range(rows)]
    x_edges = [level.tile_image_box(0, c)[0::2] for c in range(cols)]
    assert _intervals_tile_exactly(y_edges, h)
    assert _intervals_tile_exactly(x_edges, w)


@settings(max_examples=150, deadline=None)
@given(h=SIDES, w=SIDES)
@example(h=27_328, w=600)
@example(h=600, w=27_328)
@example(h=1, w=30_000)
@example(h=30_000, w=1)
@example(h=1, w=1)
@example(h=1009, w=1009)
def test_levels_cover_the_image_for_any_size(h: int, w: int) -> None:
    geometry = build_pyramid(h, w, dip_rule="paper-text")
    levels = geometry.levels
    assert levels[-1].downsample == 1 and (levels[-1].height, levels[-1].width) == (h, w)
    for coarse, fine in zip(levels, levels[1:], strict=False):
        assert coarse.downsample == 2 * fine.downsample
        # Halving continued only while the short side exceeded the minimum.
        assert min(h, w) / fine.downsample > geometry.min_short_side
    assert min(h, w) / levels[0].downsample <= geometry.min_short_side or len(levels) == 1
    _check_levels(geometry, h, w)


@settings(max_examples=150, deadline=None)
@given(h=SIDES, w=SIDES)
@example(h=27_328, w=600)
@example(h=1, w=30_000)
@example(h=1009, w=1009)
@example(h=1008, w=2016)
def test_official_levels_halve_then_end_at_1008_long_side(h: int, w: int) -> None:
    geometry = build_pyramid(h, w, dip_rule="official")
    levels = geometry.levels
    assert levels[-1].downsample == 1 and (levels[-1].height, levels[-1].width) == (h, w)
    long_side = max(h, w)
    if long_side <= geometry.min_short_side:
        assert len(levels) == 1
    else:
        assert max(levels[0].height, levels[0].width) == geometry.min_short_side
        for fine in levels[1:]:
            # Every finer level is a power-of-two halving no shorter than 1,008 px.
            assert math.log2(fine.downsample) == int(math.log2(fine.downsample))
            assert long_side / fine.downsample >= geometry.min_short_side
        halvings = [lv.downsample for lv in levels if lv.downsample == int(lv.downsample)]
        assert long_side / (2 * max(halvings)) < geometry.min_short_side
    _check_levels(geometry, h, w)


def _check_levels(geometry: PyramidGeometry, h: int, w: int) -> None:
    levels = geometry.levels
    for index, level in enumerate(levels):
        assert level.index == index
        assert (level.image_height, level.image_width) == (h, w)
        assert level.height == max(1, round(h / level.downsample))
        assert level.width == max(1, round(w / level.downsample))
        _check_level(level, h, w)
    th, tw = geometry.thumbnail.resized_size
    assert max(th, tw) == B
    assert abs(th - h * B / max(h, w)) <= 0.5 or th == 1
    assert abs(tw - w * B / max(h, w)) <= 0.5 or tw == 1


@st.composite
def _level_and_tile(draw: st.DrawFn) -> tuple[PyramidGeometry, int, int, int]:
    geometry = build_pyramid(draw(SIDES), draw(SIDES))
    index = draw(st.integers(0, geometry.num_levels - 1))
    rows, cols = geometry.levels[index].grid
    return geometry, index, draw(st.integers(0, rows - 1)), draw(st.integers(0, cols - 1))


@settings(max_examples=300, deadline=None)
@given(case=_level_and_tile())
def test_tiles_covering_a_tiles_own_box_is_that_tile(
    case: tuple[PyramidGeometry, int, int, int],
) -> None:
    geometry, index, row, col = case
    level = geometry.levels[index]
    x0, y0, x1, y1 = level.tile_image_box(row, col)
    assert 0 <= x0 < x1 <= geometry.image_width and 0 <= y0 < y1 <= geometry.image_height
    assert level.tiles_covering((x0, y0, x1, y1)) == [(row, col)]


@settings(max_examples=60, deadline=None)
@given(h=SIDES, w=SIDES)
@example(h=27_328, w=600)
@example(h=600, w=27_328)
def test_every_tile_of_every_level_round_trips(h: int, w: int) -> None:
    geometry = build_pyramid(h, w)
    for level in geometry.levels:
        rows, cols = level.grid
        # Tiles along the border and the diagonal exercise every distinct row and column.
        border = {(r, c) for r in range(rows) for c in (0, cols - 1)}
        border |= {(r, c) for c in range(cols) for r in (0, rows - 1)}
        border |= {(i % rows, i % cols) for i in range(max(rows, cols))}
        for row, col in border:
            assert level.tiles_covering(level.tile_image_box(row, col)) == [(row, col)]


@st.composite
def _token(draw: st.DrawFn) -> tuple[PyramidGeometry, int, int, int]:
    h, w = draw(SIDES), draw(SIDES)
    geometry = build_pyramid(h, w)
    if geometry.num_levels < 2:
        geometry = build_pyramid(h + 2100, w + 2100)
    index = draw(st.integers(0, geometry.num_levels - 2))
    rows, cols = geometry.levels[index].token_grid(TOKENS)
    return geometry, index, draw(st.integers(0, rows - 1)), draw(st.integers(0, cols - 1))


@settings(max_examples=300, deadline=None)
@given(case=_token())
@example(case=(build_pyramid(27_328, 2_000), 0, 0, 0))
def test_token_maps_to_next_level_tiles_that_cover_its_ground(
    case: tuple[PyramidGeometry, int, int, int],
) -> None:
    geometry, index, row, col = case
    level, finer = geometry.levels[index], geometry.levels[index + 1]
    tx0, ty0, tx1, ty1 = level.token_image_box(row, col, TOKENS)
    tiles = geometry.next_level_tiles(index, [(row, col)], TOKENS)
    if tx1 <= tx0 or ty1 <= ty0:  # a token over padding has no ground
        assert tiles == []
        return
    assert tiles, "a token with ground must select at least one tile"
    boxes = [finer.tile_image_box(r, c) for r, c in tiles]
    # The selected tiles form a rectangle whose union covers the token's ground ...
    assert len(tiles) == len({r for r, _ in tiles}) * len({c for _, c in tiles})
    eps = 1e-6 * max(geometry.image_height, geometry.image_width)
    assert min(b[0] for b in boxes) <= tx0 + eps and max(b[2] for b in boxes) >= tx1 - eps
    assert min(b[1] for b in boxes) <= ty0 + eps and max(b[3] for b in boxes) >= ty1 - eps
    # ... and every one of them overlaps that ground.
    for bx0, by0, bx1, by1 in boxes:
        assert min(bx1, tx1) - max(bx0, tx0) > 0 and min(by1, ty1) - max(by0, ty0) > 0


@settings(max_examples=200, deadline=None)
@given(case=_level_and_tile(), fx=st.floats(0, 1), fy=st.floats(0, 1))
def test_canvas_and_image_maps_are_inverse(
    case: tuple[PyramidGeometry, int, int, int], fx: float, fy: float
) -> None:
    geometry, index, _, _ = case
    level = geometry.levels[index]
    x, y = fx * geometry.image_width, fy * geometry.image_height
    canvas = level.image_to_canvas((x, y, x, y))
    back = level.canvas_to_image(canvas)
    assert back == pytest.approx((x, y, x, y), rel=1e-9, abs=1e-9)
