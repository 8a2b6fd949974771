"""The shared training loop: its schedule, exact resume of a stopped SFT, no pickles."""

from __future__ import annotations

import json
import math
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import get_cosine_schedule_with_warmup

from lrsvqa.train.batch import IGNORE_INDEX, SFTExample, VisualInput
from lrsvqa.train.checkpoint import CheckpointError, list_checkpoints
from lrsvqa.train.loop import warmup_cosine
from lrsvqa.train.sft import SFTConfig, train_sft
from tests.tiny_models import tiny_adapter

RED, BLUE = (220, 30, 30), (30, 80, 235)


def _rates(scheduler, optimizer, steps: int) -> list[float]:
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.1)


def test_schedule_is_hf_cosine_and_the_sft_recipe_schedule() -> None:
    a, b = _optimizer(), _optimizer()
    ours = _rates(warmup_cosine(a, 7, 40), a, 45)
    theirs = _rates(get_cosine_schedule_with_warmup(b, 7, 40), b, 45)
    assert ours == theirs
    # SFT's schedule: the first step already trains, the decay floors at 5%.
    c = _optimizer()
    got = _rates(warmup_cosine(c, 5, 30, 0.05, warmup_offset=1), c, 30)
    expected = [
        0.1 * ((s + 1) / 5 if s < 5 else 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (s - 5) / 25)))
        for s in range(30)
    ]
    assert got == pytest.approx(expected, rel=1e-12)


class RandomSampler:
    """SFT examples of random colours, drawn from its own checkpointable RNG."""

    def __init__(self, seed: int, stop_at: int | None = None) -> None:
        self.rng, self.stop_at, self.calls = random.Random(seed), stop_at, 0

    def batch(self, step: int, n: int) -> list[SFTExample]:
        if self.stop_at is not None and self.calls == self.stop_at:
            raise KeyboardInterrupt("stopped")
        self.calls += 1
        examples = []
        for _ in range(n):
            red = self.rng.random() < 0.5
            tile = np.full((336, 336, 3), RED if red else BLUE, dtype=np.uint8)
            labels = {"colour": np.full(64, 0 if red else 1, dtype=np.int64)}
            labels["colour"][: self.rng.randrange(8)] = IGNORE_INDEX
            visual = VisualInput(tile // 2, [tile], [(0, 0)], token_labels=labels)
            examples.append(
                SFTExample(visual, "what color is the ship ?", "red" if red else "blue")
            )
        return examples

    def state_dict(self) -> dict:
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))


CONFIG = SFTConfig(
    steps=6,
    batch_size=2,
    learning_rate=3e-3,
    warmup_steps=2,
    vision_steps=2,
    token_heads={"colour": 2},
    log_every=1,
    save_every=3,
)


def _run(checkpoints: Path, log: Path, sampler: RandomSampler, resume: bool = False):
    torch.manual_seed(0)
    adapter = tiny_adapter()
    losses = train_sft(
        adapter,
        sampler.batch,
        CONFIG,
        log_path=log,
        checkpoint_dir=checkpoints,
        resume=resume,
        sampler_state=sampler,
        progress=False,
    )
    return adapter, losses


def test_a_stopped_sft_resumes_at_its_last_checkpoint_to_the_same_weights(tmp_path) -> None:
    straight, straight_losses = _run(tmp_path / "a", tmp_path / "a.jsonl", RandomSampler(1))
    # Killed while drawing step 5's batch (of 8: 2 vision + 6 main): checkpoint 3 is the
    # last one, in the main phase, so steps 4-5 are redone from it.
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b", tmp_path / "b.jsonl", RandomSampler(1, stop_at=5))
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step_0000003"]
    resumed, resumed_losses = _run(tmp_path / "b", tmp_path / "b.jsonl", RandomSampler(1), True)
    assert resumed_losses == straight_losses and len(straight_losses) == 6
    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    log = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["step"]) for r in log] == [("vision", 1), ("vision", 2)] + [
        ("sft", s) for s in range(3, 9)
    ]
    assert log == [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    names = {p.name for p in list_checkpoints(tmp_path / "b")[-1].iterdir()}
    assert names == {
        "state.json",
        "model.safetensors",
        "heads.safetensors",
        "optimizer.safetensors",
        "rng_0.safetensors",
        "rng_0.json",
    }


class Payload:
    """Unpickling this creates the marker file: proof that a pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant_pickle(folder: Path, marker: Path, name: str = "custom_checkpoint_0.pkl") -> Path:
    """Write a pickle whose loading would create ``marker``."""
    path = folder / name
    path.write_bytes(pickle.dumps(Payload(marker)))
    return path


def test_resume_refuses_a_planted_pickle_and_never_runs_it(tmp_path) -> None:
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "c", tmp_path / "c.jsonl", RandomSampler(1, stop_at=5))
    folder = list_checkpoints(tmp_path / "c")[-1]
    marker = tmp_path / "pwned"
    planted = plant_pickle(folder, marker)
    with pytest.raises(CheckpointError, match="pickle") as error:
        _run(tmp_path / "c", tmp_path / "c.jsonl", RandomSampler(1), True)
    assert str(planted) in str(error.value) and "\n" not in str(error.value)
    assert not marker.exists()
    # A folder accelerate's save_state wrote (or any foreign folder) is refused too.
    planted.unlink()
    (folder / "state.json").unlink()
    with pytest.raises(CheckpointError, match="not a readable lrsvqa checkpoint"):
        _run(tmp_path / "c", tmp_path / "c.jsonl", RandomSampler(1), True)


@pytest.mark.slow
def test_sft_cli_trains_on_conversations_and_resumes_to_the_same_model(tmp_path) -> None:
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from lrsvqa.app.cli import app
    from lrsvqa.models.adapter import LlavaAdapter
    from lrsvqa.models.tiny import build_tiny_llava, save_tiny_llava
    from lrsvqa.train.toy import TOY_WORDS, write_toy_dataset
    from tests.test_trust import one_line_error

    model, processor = build_tiny_llava(TOY_WORDS, num_layers=2, seed=0)
    save_tiny_llava(model, processor, tmp_path / "model")
    data = write_toy_dataset(tmp_path / "data", 3, seed=0, size_range=(300, 400))
    base = ["sft", "--model", str(tmp_path / "model"), "--data", str(data), "--steps", "6"]
    base += ["--batch-size", "2", "--lr", "3e-3", "--warmup-steps", "2", "--save-every", "3"]
    runner = CliRunner()
    straight = runner.invoke(app, [*base, "--out", str(tmp_path / "a"), "--log-every", "1"])
    assert straight.exit_code == 0, straight.output
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["steps"] == 6 and report["conversations"] == 3
    stopped = [*base, "--out", str(tmp_path / "b"), "--log-every", "1"]
    assert runner.invoke(app, [*stopped, "--stop-after", "3"]).exit_code == 0
    assert not (tmp_path / "b" / "model").exists()
    again = runner.invoke(app, stopped)
    one_line_error(again, str(tmp_path / "b"), "already holds checkpoints")
    resumed = runner.invoke(app, [*stopped, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    a = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name, value in a.items():
        assert torch.equal(value, b[name]), name
    first = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert any(not torch.equal(first[k], a[k]) for k in first)
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert LlavaAdapter.from_pretrained(tmp_path / "b" / "model").tokens_per_side > 0


def test_sft_cli_with_pooled_tiles_saves_a_model_that_loads_pooled(tmp_path) -> None:
    from typer.testing import CliRunner

    from lrsvqa.app.cli import app
    from lrsvqa.models.adapter import LlavaAdapter
    from lrsvqa.models.tiny import build_tiny_llava, save_tiny_llava
    from lrsvqa.train.toy import TOY_WORDS, write_toy_dataset

    model, processor = build_tiny_llava(TOY_WORDS, num_layers=2, seed=0)
    save_tiny_llava(model, processor, tmp_path / "model")
    data = write_toy_dataset(tmp_path / "data", 2, seed=0, size_range=(300, 400))
    args = ["sft", "--model", str(tmp_path / "model"), "--data", str(data), "--steps", "1"]
    args += ["--batch-size", "1", "--save-every", "0", "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, [*args, "--hr-pool", "2", "--hr-pool-mode", "average"])
    assert result.exit_code == 0, result.output
    trained = LlavaAdapter.from_pretrained(tmp_path / "out" / "model")
    assert (trained.options.hr_pool, trained.options.pool_mode) == (2, "average")
    assert trained.tokens_per_side == 4
