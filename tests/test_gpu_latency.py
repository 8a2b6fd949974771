"""benchmarks/gpu_latency.py, scaled down on CPU (its --smoke mode): the script runs end to
end and its rows hold what the strategies fed the model."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from lrsvqa.flops import ModelDims
from lrsvqa.strategies.registry import count_strategy

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_latency.py"


def _script():
    spec = importlib.util.spec_from_file_location("gpu_latency", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_smoke_run_times_every_strategy_on_every_size(tmp_path: Path, capsys) -> None:
    script = _script()
    out = tmp_path / "rows.json"
    timings = script.main(
        [
            "--smoke",
            "--repeats",
            "1",
            "--new-tokens",
            "2",
            "--sides",
            "500,900",
            "--strategies",
            "anyres-p144,c2f",
            "--image-dir",
            str(tmp_path),
            "--json",
            str(out),
        ]
    )
    assert [(t.side, t.strategy) for t in timings] == [
        (500, "anyres-p144"),
        (500, "c2f"),
        (900, "anyres-p144"),
        (900, "c2f"),
    ]
    assert all(t.seconds > 0 and t.peak_gib is None for t in timings)  # no GPU memory on CPU
    # The smoke model pools tiles 2 x 2 like the paper's: anyres-p144 feeds what `flops`
    # counts for that architecture (8 x 8 tokens per tile, 4 x 4 after pooling).
    dims = ModelDims(64, 128, 6, patch_size=42, hr_pool=2)
    for t in timings:
        if t.strategy == "anyres-p144":
            expected = count_strategy("anyres-p144", dims, t.side, t.side).tokens_to_llm
            assert t.vision_tokens_to_llm == expected
    table = capsys.readouterr().out
    assert "| 500 px | anyres-p144 |" in table and table.count("| 1.00 |") == 2
    assert [row["strategy"] for row in json.loads(out.read_text())] == [t.strategy for t in timings]
