"""Write synthetic scenes to disk: pyramidal TIFFs, JSON labels and a manifest.

A world is a directory per split::

    <out>/<split>/manifest.json
    <out>/<split>/images/<id>.tif     tiled RGB with overviews
    <out>/<split>/labels/<id>.json    list of {category, hbox, rbox, color, shape, attributes}

Scenes are expensive (a 32k scene is 3 GB of pixels), so :func:`generate_world` is a
cache: a scene whose files exist and whose manifest entry has the same spec and
generator version is not rendered again, and the manifest is rewritten after every
scene so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lrsvqa.imagery.writer import write_pyramidal_tiff
from lrsvqa.synthetic.scene import (
    DEFAULT_OBJECT_RANGE,
    MIN_SIDE,
    Scene,
    SceneSpec,
    generate_scene,
)

# Bump when rendering or placement changes, so cached scenes are regenerated.
GENERATOR_VERSION = 4
TILE_SIZE = 512
# Deflate level 1 compresses these textures almost as well as the default level 6 in a
# fraction of the time, which dominates the cost of writing a 30k scene.
COMPRESSION_LEVEL = 1
MAX_ASPECT = 1.5
# Every this many scenes of a world (the first, then every 4th) is drawn at exactly the
# largest aspect ratio the bounds allow, alternating wide and tall, so a world with a
# large ``max_aspect`` always holds its extreme strips instead of leaving them to chance.
EXTREME_EVERY = 4


def _write_json(path: Path, data: Any) -> None:
    """Write JSON atomically, so readers never see a half-written file."""
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_scene(scene: Scene, out_dir: str | Path, name: str | None = None) -> tuple[Path, Path]:
    """Render a scene to ``<out_dir>/images/<name>.tif`` and ``<out_dir>/labels/<name>.json``.

    Args:
        scene: The scene to write.
        out_dir: Directory receiving ``images/`` and ``labels/``.
        name: File stem; defaults to ``synth-<seed>-<height>x<width>``.

    Returns:
        ``(tiff_path, labels_path)``. The TIFF is renamed into place only when
        complete, so an existing file is always a whole image.
    """
    spec = scene.spec
    name = name or f"synth-{spec.seed}-{spec.height}x{spec.width}"
    images, labels = Path(out_dir) / "images", Path(out_dir) / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    tiff_path, labels_path = images / f"{name}.tif", labels / f"{name}.json"
    partial = images / f"{name}.tif.partial"
    write_pyramidal_tiff(
        partial,
        scene.height,
        scene.width,
        scene.render_window,
        tile_size=TILE_SIZE,
        compression="zlib",
        compression_level=COMPRESSION_LEVEL,
    )
    os.replace(partial, tiff_path)
    _write_json(labels_path, [obj.to_dict() for obj in scene.objects])
    return tiff_path, labels_path


def world_specs(
    num_scenes: int,
    *,
    min_side: int,
    max_side: int,
    seed: int,
    split: str,
    objects: tuple[int, int] = DEFAULT_OBJECT_RANGE,
    max_aspect: float = MAX_ASPECT,
    min_short_side: int = MIN_SIDE,
    extreme_every: int = EXTREME_EVERY,
) -> list[SceneSpec]:
    """Specs of a world's scenes; scene ``i`` does not depend on ``num_scenes``.

    The long side is uniform in ``[min_side, max_side]`` and the short side is the long
    one over a ratio uniform in ``[1, max_aspect]`` (either orientation), but never under
    ``min_short_side``, so the short side of a 32,768 px scene can go down to 4,096 at
    aspect 8. Scene ``i`` with ``i % extreme_every == 0`` is drawn at exactly
    ``max_aspect`` (its long side at least ``max_aspect * min_short_side`` where the
    bounds allow), wide and tall in turn; ``extreme_every=0`` leaves every ratio to
    chance. The split name is hashed into the seed so that splits with the same
    ``seed`` hold different scenes. ``objects`` is the range of the object count per
    scene.

    Raises:
        ValueError: When the sides are not ordered ``MIN_SIDE <= min_short_side <=
            min_side <= max_side`` or ``max_aspect < 1``.
    """
    if not MIN_SIDE <= min_short_side <= min_side <= max_side:
        raise ValueError(
            f"need {MIN_SIDE} <= min_short_side <= min_side <= max_side, "
            f"got {min_short_side}, {min_side}, {max_side}"
        )
    if max_aspect < 1:
        raise ValueError(f"need max_aspect >= 1, got {max_aspect}")
    rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
    # The shortest long side at which an extreme scene keeps its short side on the floor.
    extreme_low = min(max_side, max(min_side, math.ceil(max_aspect * min_short_side)))
    specs = []
    for index in range(num_scenes):
        extreme = extreme_every > 0 and index % extreme_every == 0
        low = extreme_low if extreme else min_side
        long_side = int(rng.integers(low, max_side + 1))
        ratio = max_aspect if extreme else rng.uniform(1.0, max_aspect)
        short_side = max(min_short_side, round(long_side / ratio))
        tall = index // extreme_every % 2 == 1 if extreme else bool(rng.integers(2))
        height, width = (long_side, short_side) if tall else (short_side, long_side)
        specs.append(SceneSpec(int(rng.integers(1 << 31)), height, width, *objects))
    return specs


def _cached(entry: dict[str, Any], spec: SceneSpec, root: Path) -> bool:
    """Whether a manifest entry already holds this spec's files from this generator."""
    return (
        entry.get("spec") == spec.to_dict()
        and entry.get("version") == GENERATOR_VERSION
        and (root / entry["image"]).is_file()
        and (root / entry["labels"]).is_file()
    )


def _previous_entries(manifest_path: Path) -> dict[str, dict[str, Any]]:
    """Scene entries of an existing manifest by id; none if it is missing or unreadable."""
    try:
        scenes = json.loads(manifest_path.read_text(encoding="utf-8"))["scenes"]
        return {entry["id"]: entry for entry in scenes}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def generate_world(
    out_dir: str | Path,
    *,
    num_scenes: int,
    min_side: int,
    max_side: int,
    seed: int,
    split: str = "test",
    objects: tuple[int, int] = DEFAULT_OBJECT_RANGE,
    max_aspect: float = MAX_ASPECT,
    min_short_side: int = MIN_SIDE,
    extreme_every: int = EXTREME_EVERY,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Generate (or reuse) a split of synthetic scenes and write its manifest.

    Args:
        out_dir: World root; the split goes to ``<out_dir>/<split>/``.
        num_scenes: Number of scenes.
        min_side: Shortest long side in pixels.
        max_side: Longest long side in pixels.
        seed: World seed.
        split: Split name, e.g. ``"train"`` or ``"test"``.
        objects: Fewest and most objects per scene.
        max_aspect: Largest ratio of long to short side.
        min_short_side: Shortest short side in pixels.
        extreme_every: Every this many scenes is drawn at ``max_aspect`` (0: none);
            see :func:`world_specs`.
        log: Called with one line per scene (written or reused).

    Returns:
        The manifest, as written to ``<out_dir>/<split>/manifest.json``: world
        parameters plus ``scenes``, a list of ``{id, image, labels, height, width,
        num_objects, spec, version}`` with paths relative to the manifest.
    """
    root = Path(out_dir) / split
    root.mkdir(parents=True, exist_ok=True)
    manifest_path = root / "manifest.json"
    previous = _previous_entries(manifest_path)
    manifest: dict[str, Any] = {
        "generator": "lrsvqa.synthetic",
        "split": split,
        "seed": seed,
        "min_side": min_side,
        "max_side": max_side,
        "max_aspect": max_aspect,
        "min_short_side": min_short_side,
        "extreme_every": extreme_every,
        "scenes": [],
    }
    specs = world_specs(
        num_scenes,
        min_side=min_side,
        max_side=max_side,
        seed=seed,
        split=split,
        objects=objects,
        max_aspect=max_aspect,
        min_short_side=min_short_side,
        extreme_every=extreme_every,
    )
    for index, spec in enumerate(specs):
        scene_id = f"{split}-{index:04d}"
        entry = previous.get(scene_id)
        if entry is not None and _cached(entry, spec, root):
            status = "cached"
        else:
            scene = generate_scene(spec)
            tiff_path, labels_path = write_scene(scene, root, scene_id)
            entry = {
                "id": scene_id,
                "image": tiff_path.relative_to(root).as_posix(),
                "labels": labels_path.relative_to(root).as_posix(),
                "height": spec.height,
                "width": spec.width,
                "num_objects": len(scene.objects),
                "spec": spec.to_dict(),
                "version": GENERATOR_VERSION,
            }
            status = "written"
        manifest["scenes"].append(entry)
        _write_json(manifest_path, manifest)
        if log is not None:
            log(f"{scene_id} {spec.height}x{spec.width} {entry['num_objects']} objects: {status}")
    _write_json(manifest_path, manifest)
    return manifest
