from __future__ import annotations

import numpy as np
import pytest

from lrsvqa.imagery.radiometry import (
    dtype_limits,
    needs_stretch,
    percentile_limits,
    resolve_bands,
    stretch_to_uint8,
    validate_percentiles,
)


@pytest.mark.parametrize(
    ("num_bands", "bands", "expected"),
    [
        (1, None, (1, 1, 1)),
        (3, None, (1, 2, 3)),
        (4, None, (1, 2, 3)),
        (13, None, (1, 2, 3)),
        (4, (4, 3, 2), (4, 3, 2)),
        (4, [4], (4, 4, 4)),
        (2, (2,), (2, 2, 2)),
        (2, (1, 2, 2), (1, 2, 2)),
    ],
)
def test_resolve_bands(num_bands: int, bands: tuple[int, ...] | None, expected: tuple) -> None:
    choice = resolve_bands(num_bands, bands)
    assert choice.rgb == expected
    # Only a multi-band default the file does not back carries a notice naming the bands.
    if bands is None and num_bands >= 3:
        assert choice.notice is not None and "bands 1, 2, 3" in choice.notice
    else:
        assert choice.notice is None


def test_resolve_bands_follows_the_files_meaning() -> None:
    choice = resolve_bands(4, None, from_meaning=(3, 2, 1))
    assert choice.rgb == (3, 2, 1) and choice.notice is None
    # An explicit choice wins over the file's meaning.
    assert resolve_bands(4, (4, 3, 2), from_meaning=(3, 2, 1)).rgb == (4, 3, 2)


@pytest.mark.parametrize(
    ("num_bands", "bands", "message"),
    [
        (2, None, "2-band"),
        (3, (1, 2), r"1 \(grey\) or 3"),
        (3, (1, 2, 4), "out of range"),
        (3, (0,), "out of range"),
        (3, (-1,), "out of range"),
        (0, None, "0 bands"),
    ],
)
def test_resolve_bands_rejects(num_bands: int, bands: tuple | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_bands(num_bands, bands)


@pytest.mark.parametrize("bad", [(98, 2), (2, 2), (-1, 50), (50, 101), (1, 2, 3)])
def test_validate_percentiles_rejects(bad: tuple) -> None:
    with pytest.raises(ValueError):
        validate_percentiles(bad)


def test_needs_stretch_only_for_non_uint8() -> None:
    assert not needs_stretch(np.dtype(np.uint8))
    assert all(needs_stretch(np.dtype(t)) for t in (np.uint16, np.int16, np.float32, np.uint32))


def test_percentile_limits_per_band_ignore_nan() -> None:
    ramp = np.arange(101, dtype=np.float64)
    sample = np.stack([ramp, ramp * 10, np.full(101, np.nan)], axis=-1).reshape(1, 101, 3)
    sample[0, 0, 0] = np.inf
    low, high = percentile_limits(sample, (2, 98))
    assert low[1] == pytest.approx(20) and high[1] == pytest.approx(980)
    # Band 0 lost its 0 to inf: percentiles of 1..100.
    assert low[0] == pytest.approx(np.percentile(ramp[1:], 2))
    assert (low[2], high[2]) == (0.0, 1.0)


def test_stretch_maps_limits_to_0_and_255_and_clips() -> None:
    data = np.array([[[100.0], [200.0], [300.0], [50.0], [1000.0], [np.nan]]])
    out = stretch_to_uint8(data, np.array([100.0]), np.array([300.0]))
    assert out.dtype == np.uint8
    assert out.ravel().tolist() == [0, 128, 255, 0, 255, 0]


def test_stretch_flat_band_is_black_below_and_white_above() -> None:
    out = stretch_to_uint8(np.array([[[5], [5], [6]]], dtype=np.uint16), 5.0, 5.0)
    assert out.ravel().tolist() == [0, 0, 255]


def test_stretch_is_per_band() -> None:
    data = np.array([[[10, 10, 10]]], dtype=np.uint16)
    out = stretch_to_uint8(data, np.array([0, 10, 0]), np.array([20, 20, 10]))
    assert out.ravel().tolist() == [128, 0, 255]


@pytest.mark.parametrize(
    ("dtype", "limits"),
    [(np.uint16, (0, 65535)), (np.int16, (-32768, 32767)), (np.float32, (0, 1)), (bool, (0, 1))],
)
def test_dtype_limits(dtype: type, limits: tuple[float, float]) -> None:
    assert dtype_limits(np.dtype(dtype)) == limits


def test_dtype_limits_rejects_complex() -> None:
    with pytest.raises(ValueError):
        dtype_limits(np.dtype(np.complex64))
