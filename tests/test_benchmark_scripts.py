"""The synthetic-world benchmark's rows and question mix, the oracle-reading one's token choice."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from lrsvqa.bench.templates import QUESTION_KINDS, REFERENCE_KINDS, question_kind
from lrsvqa.imagery.pyramid import build_pyramid
from lrsvqa.models.layout import tile_token_positions
from lrsvqa.strategies.registry import strategy_entry
from lrsvqa.train.samplers import tokens_touching

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_benchmark_has_the_issues_rows_and_the_papers_ablations() -> None:
    runs = _script("synthetic_world").benchmark_runs(
        {"alpha": 0.1, "max_tiles": 80}, {"rfm_path": "rfm"}, 144, ablations=True, fullres=True
    )
    strategies = [strategy for strategy, _ in runs.values()]
    for name in ("thumbnail", "anyres-p4", "anyres-p9", "anyres-p25", "fullres", "c2f-nodip"):
        assert name in strategies
    for peer in ("visionzip", "prumerge++", "fastv", "pdrop"):  # on the p144 grid
        assert [o["grid_tiles"] for s, o in runs.values() if s == peer] == [144]
    for strategy, options in runs.values():  # every row's options parse as its strategy's
        strategy_entry(strategy).parse({"model_path": "m", **options})
    c2f = [o for s, o in runs.values() if s == "c2f"]
    assert {o.get("rfm_path") for o in c2f} == {"rfm", None}  # distilled and training-free
    assert sorted(o["fixed_layers"] for o in c2f if "fixed_layers" in o) == [2, 3, 4, 5]
    retain = sorted(o["alpha"] for s, o in runs.values() if s == "c2f-nodip")
    assert retain == [0.1, 0.25, 0.5, 0.75, 0.9]
    bare = _script("synthetic_world").benchmark_runs({"alpha": 0.1}, {}, 36, False, False)
    assert "fullres" not in [s for s, _ in bare.values()]
    assert not any("rfm_path" in o for _, o in bare.values())
    assert "native" not in [s for s, _ in bare.values()]  # LLaVA has no dynamic resolution
    qwen = _script("synthetic_world").benchmark_runs({"alpha": 0.1}, {}, 36, False, False, True)
    assert qwen["native"] == ("native", {})


def test_questions_give_every_reference_kind_a_quarter() -> None:
    script = _script("synthetic_world")

    def scene(index: int, counts: int) -> list[dict]:
        named = [
            {"id": f"{index}-{kind}-{n}", "reference_kind": kind}
            for n in range(6)
            for kind in REFERENCE_KINDS
        ]
        return named + [{"id": f"{index}-count-{n}"} for n in range(counts)]

    per_scene = [scene(index, counts=5) for index in range(24)]
    records = script.sample_by_kind([list(qs) for qs in per_scene], 400)
    assert Counter(map(question_kind, records)) == {kind: 100 for kind in QUESTION_KINDS}
    assert len({r["id"] for r in records}) == 400
    assert {r["id"].split("-")[0] for r in records} == {str(i) for i in range(24)}
    # 24 count questions in all: the other kinds share the shortfall
    scarce = script.sample_by_kind([scene(index, counts=1) for index in range(24)], 400)
    kinds = Counter(map(question_kind, scarce))
    assert len(scarce) == 400 and kinds["count"] == 24
    assert {kinds[kind] for kind in REFERENCE_KINDS} == {125, 126}


def test_oracle_keeps_exactly_the_tokens_whose_ground_touches_the_box() -> None:
    level = build_pyramid(4096, 4096).levels[-1]  # the finest level: 1 px per image px
    g = 8
    box = (700.0, 10.0, 720.0, 30.0)  # inside tile (0, 2) of 336 px, token column 16
    tiles = level.tiles_covering(box)
    positions = tile_token_positions(tiles, g)
    touched = positions[tokens_touching(level, positions, [box], g)[:, 0]]
    step = level.tile_size / g * level.image_width / level.resized_size[1]
    expected = {(int(y // step), int(x // step)) for x in (700, 719) for y in (10, 29)}
    assert {tuple(p) for p in touched.tolist()} == expected
    assert np.all(tokens_touching(level, positions, [(0, 0, 1e9, 1e9)], g))


def test_side_by_side_counts_each_cell_and_the_discordant_pairs(tmp_path: Path) -> None:
    import json

    kinds = ("scene-positional", "scene-positional", "category-unique", None)
    questions = tmp_path / "questions.jsonl"
    questions.write_text(
        "".join(
            json.dumps(
                {
                    "question_id": f"SYN_{i}",
                    "image": "images/a.tif",
                    "category": "count" if kind is None else "object color",
                    "text": "?",
                    "ground_truth": "red",
                    **({"reference_kind": kind} if kind else {}),
                }
            )
            + "\n"
            for i, kind in enumerate(kinds)
        )
    )

    def answers(name: str, right: tuple[int, ...]) -> Path:
        path = tmp_path / f"{name}.jsonl"
        lines = [
            {"question_id": f"SYN_{i}", "answer": "red" if i in right else "blue"} for i in range(4)
        ]
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        return path

    text = _script("side_by_side").tables(
        questions, {"A": answers("a", (0, 1, 3)), "B": answers("b", (1, 2))}, [("A", "B")]
    )
    assert "| A | 100.0 (1/1) | 66.7 (2/3) | 75.0 (3/4) |" in text  # by category
    assert "| A | 0.0 (0/1) | - | 100.0 (2/2) | - |" in text  # category-unique, then positional
    assert "| A vs B | 0 / 1 | 1 / 0 | 1 / 0 | 2 / 1 |" in text
    assert text.startswith("4 of 4 questions")
    stopped = tmp_path / "b.jsonl"  # a row stopped early: all rows on what it answered
    stopped.write_text("".join(stopped.read_text().splitlines(keepends=True)[:3]))
    text = _script("side_by_side").tables(
        questions, {"A": answers("a", (0, 1, 3)), "B": stopped}, []
    )
    assert text.startswith("3 of 4 questions") and "| A | - | 66.7 (2/3) | 66.7 (2/3) |" in text
