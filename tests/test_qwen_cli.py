"""``lrsvqa ask/eval/distill/sft/flops`` on a saved tiny Qwen-VL checkpoint, unchanged."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lrsvqa.app.cli import app
from lrsvqa.models.qwen_adapter import QwenVLAdapter
from lrsvqa.models.rfm import RegionFocusModule
from lrsvqa.models.tiny_qwen import build_tiny_qwen_vl, save_tiny_qwen_vl
from lrsvqa.train.batch import embed_batch
from lrsvqa.train.data import ConversationDataset, load_conversations
from lrsvqa.train.teacher import StudentAttention, teacher_attention
from lrsvqa.train.toy import TOY_WORDS, write_toy_dataset
from tests.qwen_models import QWEN_KINDS


@pytest.fixture(scope="module", params=QWEN_KINDS)
def checkpoint(request, tmp_path_factory):
    model, processor = build_tiny_qwen_vl(TOY_WORDS, kind=request.param, num_layers=4)
    return save_tiny_qwen_vl(model, processor, tmp_path_factory.mktemp("qwen") / "model")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("data"), 2, seed=3, size_range=(400, 600))


def test_distill_then_ask_with_the_distilled_and_the_training_free_rfm(checkpoint, data, tmp_path):
    runner = CliRunner()
    out = tmp_path / "rfm"
    command = ["distill", "--model", str(checkpoint), "--data", str(data), "--out", str(out)]
    command += ["--rfm-layers", "1,2", "--pairs", "0:0,2:3", "--steps", "2", "--save-every", "0"]
    distilled = runner.invoke(app, command)
    assert distilled.exit_code == 0, distilled.output
    assert RegionFocusModule.load(out, QwenVLAdapter.from_pretrained(checkpoint)).layers
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (900, 700, 3), np.uint8)).save(
        tmp_path / "scene.png"
    )
    ask = ["ask", str(tmp_path / "scene.png"), "what color is the ship?"]
    ask += ["--model", str(checkpoint), "--json", "--max-new-tokens", "3"]
    for extra in (["--rfm", str(out)], []):
        result = runner.invoke(app, [*ask, *extra])
        assert result.exit_code == 0, result.output
        trace = json.loads(result.stdout)
        assert trace["thumbnail_tokens"] == 256 and trace["retained_tokens"] >= 1
    assert isinstance(trace["answer"], str)


def test_eval_and_flops(checkpoint, tmp_path):
    runner = CliRunner()
    Image.fromarray(np.zeros((500, 700, 3), np.uint8)).save(tmp_path / "a.png")
    row = {"question_id": "T_1", "image": "a.png", "category": "reasoning", "text": "Q?"}
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps(row | {"ground_truth": "no"}) + "\n", encoding="utf-8")
    for strategy in ("c2f", "native"):
        output = tmp_path / f"{strategy}.jsonl"
        args = ["eval", "--data-root", str(tmp_path), "--questions", str(questions)]
        args += ["--strategy", strategy, "--model", str(checkpoint), "-o", str(output)]
        result = runner.invoke(app, [*args, "--no-progress", "--no-score"])
        assert result.exit_code == 0, result.output
        record = json.loads(output.read_text().splitlines()[0])
        assert record.get("error") is None and record["vision_tokens_to_llm"] > 0
    flops = ["flops", "--config", str(checkpoint), "--strategies", "native,c2f,fastv,pdrop"]
    counted = runner.invoke(app, [*flops, "--c2f-tiles", "4", "--format", "json"])
    assert counted.exit_code == 0, counted.output
    rows = {row["strategy"]: row for row in json.loads(counted.stdout)}
    assert rows["native"]["vision_tokens_to_llm"] == 1225  # 4000 px under 1280 x 28 x 28
    assert all(row["tflops"] > 0 for row in rows.values())


def test_teacher_rows_with_mrope_equal_eager_weights(checkpoint, data):
    adapter = QwenVLAdapter.from_pretrained(checkpoint, attn_implementation="eager")
    conversations = load_conversations(data, None)
    dataset = ConversationDataset(
        conversations, adapter.processor, adapter.tile_size, adapter.tokens_per_side
    )
    with torch.no_grad():
        batch = embed_batch(adapter, [dataset[0], dataset[1]])
    assert batch.position_ids.shape == (3, *batch.attention_mask.shape)
    rows = teacher_attention(
        adapter,
        batch.inputs_embeds,
        batch.query_positions,
        batch.attention_mask,
        [0, 2, 3],
        batch.position_ids,
    )
    with torch.no_grad():
        out = adapter.language_model(
            **adapter.language_model_inputs(batch.inputs_embeds),
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            output_attentions=True,
            use_cache=False,
        )
    for k, layer in enumerate((0, 2, 3)):
        for example in range(2):
            queries = batch.query_positions[example]
            expected = out.attentions[layer][example][:, queries]
            length = int(batch.attention_mask[example].sum())
            got = rows[k, example][..., :length]
            assert torch.allclose(got, expected[..., :length], atol=1e-5)
    rfm = RegionFocusModule.from_llm(adapter, [0, 3], training_free=True)
    student = StudentAttention(rfm, [0])  # RFM layer 0 is LLM layer 0 on the same input
    with torch.no_grad():
        own = student(
            batch.inputs_embeds, batch.query_positions, batch.attention_mask, batch.position_ids
        )
    assert torch.allclose(own[0], rows[0], atol=1e-5)


def test_sft_saves_a_checkpoint_that_loads_with_the_qwen_adapter_and_answers(tmp_path):
    from safetensors.torch import load_file

    from lrsvqa.models.auto import load_adapter

    model, processor = build_tiny_qwen_vl(TOY_WORDS, num_layers=2)
    base = save_tiny_qwen_vl(model, processor, tmp_path / "model")
    data = write_toy_dataset(tmp_path / "data", 2, seed=0, size_range=(300, 400))
    args = ["sft", "--model", str(base), "--data", str(data), "--out", str(tmp_path / "out")]
    args += ["--steps", "2", "--batch-size", "1", "--lr", "3e-3", "--save-every", "0"]
    runner = CliRunner()
    pooled = runner.invoke(app, [*args, "--hr-pool", "2"])  # an input error, not a traceback
    assert pooled.exit_code == 2, pooled.output
    assert pooled.stderr.splitlines()[-1].startswith("error: hr_pool: does not apply")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["steps"] == 2 and report["conversations"] == 2
    trained_dir = tmp_path / "out" / "model"
    first, trained = (load_file(str(d / "model.safetensors")) for d in (base, trained_dir))
    assert first.keys() == trained.keys()
    assert any(not torch.equal(first[k], trained[k]) for k in first)
    adapter = load_adapter(trained_dir)
    assert isinstance(adapter, QwenVLAdapter) and adapter.tokens_per_side == 16
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (700, 500, 3), np.uint8)).save(
        tmp_path / "scene.png"
    )
    ask = ["ask", str(tmp_path / "scene.png"), "what color is the ship?", "--json"]
    answered = runner.invoke(app, [*ask, "--model", str(trained_dir), "--max-new-tokens", "3"])
    assert answered.exit_code == 0, answered.output
    trace = json.loads(answered.stdout)
    assert trace["thumbnail_tokens"] == 256 and trace["retained_tokens"] >= 1
    assert isinstance(trace["answer"], str)
