"""End-to-end distillation on a tiny model: learning, resuming, two processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lrsvqa.models.adapter import LlavaAdapter
from lrsvqa.models.rfm import WEIGHTS_NAME, RegionFocusModule
from lrsvqa.models.tiny import build_tiny_llava, save_tiny_llava
from lrsvqa.train.checkpoint import CheckpointError
from lrsvqa.train.data import ConversationDataset, load_conversations
from lrsvqa.train.distill import DistillConfig, distill, evaluate_agreement
from lrsvqa.train.toy import TOY_WORDS, write_toy_dataset

# RFM layers start as copies of LLM layers 0 and 1 but must imitate layers 2 and 5,
# so the student starts measurably different from its teachers.
RFM_LAYERS = [0, 1]
PAIRS = [(0, 2), (1, 5)]


@pytest.fixture
def one_thread():
    """Tiny tensors on 2 shared cores run much faster without intra-op threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _adapter() -> LlavaAdapter:
    model, processor = build_tiny_llava(TOY_WORDS, num_layers=6, seed=0)
    return LlavaAdapter(model, processor)


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_distillation_makes_the_student_agree_with_the_teacher(tmp_path, one_thread):
    adapter = _adapter()
    llm_before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    train = write_toy_dataset(tmp_path / "train", 12, seed=0, size_range=(500, 672))
    held_out = write_toy_dataset(tmp_path / "eval", 6, seed=1, size_range=(500, 672))
    out = tmp_path / "rfm"
    report = distill(
        DistillConfig(
            model=adapter,
            data=train,
            out_dir=out,
            rfm_layers=RFM_LAYERS,
            pairs=PAIRS,
            steps=80,
            lr=5e-3,
            log_every=10,
            save_every=0,
            eval_data=held_out,
            eval_size=6,
            progress=False,
        )
    )
    before, after = report.before, report.after
    assert after.kl < 0.7 * before.kl and after.kl_hr < 0.7 * before.kl_hr
    assert after.overlap > before.overlap + 0.1
    assert after.overlap_last > before.overlap_last + 0.1
    assert report.last_loss < 0.7 * report.first_loss
    log = _log(out)
    assert [r["step"] for r in log] == list(range(10, 81, 10))
    assert {"loss", "kl", "kl_hr", "mse", "lr"} <= set(log[0])
    assert json.loads((out / "report.json").read_text())["after"]["overlap"] == after.overlap
    # The frozen model did not move.
    for name, value in adapter.model.state_dict().items():
        assert torch.equal(value, llm_before[name]), name
    # Inference loads the result; it records its pairs and reproduces the measured agreement.
    loaded = RegionFocusModule.load(out, adapter)
    assert loaded.rfm_config.distill_pairs == [list(p) for p in PAIRS]
    assert loaded.rfm_config.layer_indices == RFM_LAYERS
    assert not torch.equal(
        loaded.layers[1].self_attn.q_proj.weight, adapter.decoder_layers[1].self_attn.q_proj.weight
    )
    dataset = ConversationDataset(
        load_conversations(held_out), adapter.processor, 336, adapter.tokens_per_side
    )
    again = evaluate_agreement(adapter, loaded, dataset, PAIRS)
    assert again.overlap == pytest.approx(after.overlap)


@pytest.mark.slow
def test_resume_continues_the_loss_curve(tmp_path, one_thread):
    adapter = _adapter()
    data = write_toy_dataset(tmp_path / "data", 6, seed=2, size_range=(300, 500))

    def run(out, stop_after=None, resume=False):
        return distill(
            DistillConfig(
                model=adapter,
                data=data,
                out_dir=out,
                rfm_layers=RFM_LAYERS,
                pairs=PAIRS,
                steps=8,
                stop_after=stop_after,
                grad_accum=2,
                lr=5e-3,
                log_every=1,
                save_every=4,
                resume=resume,
                progress=False,
            )
        )

    straight = run(tmp_path / "straight")
    interrupted = run(tmp_path / "split", stop_after=4)
    assert interrupted.steps == 4
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        run(tmp_path / "split")
    resumed = run(tmp_path / "split", resume=True)
    assert (resumed.start_step, resumed.steps) == (4, 8)
    assert straight.start_step == 0
    # 6 dialogues, 2 micro-batches per step: step 4 stopped mid-epoch, the data order,
    # optimizer moments and schedule all have to come back for the curves to coincide.
    expected, got = _log(tmp_path / "straight"), _log(tmp_path / "split")
    assert [r["step"] for r in got] == list(range(1, 9))
    for a, b in zip(expected, got, strict=True):
        assert a["epoch"] == b["epoch"]
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-9)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), a["step"]
    final = load_file(str(tmp_path / "split" / WEIGHTS_NAME))
    reference = load_file(str(tmp_path / "straight" / WEIGHTS_NAME))
    for name, value in reference.items():
        assert torch.allclose(final[name], value, atol=1e-5), name
    checkpoints = sorted(p.name for p in (tmp_path / "split" / "checkpoints").iterdir())
    assert checkpoints == ["step_0000004", "step_0000008"]


@pytest.mark.slow
def test_two_process_cpu_run(tmp_path):
    model, processor = build_tiny_llava(TOY_WORDS, num_layers=6, seed=0)
    save_tiny_llava(model, processor, tmp_path / "model")
    data = write_toy_dataset(tmp_path / "data", 8, seed=0, size_range=(400, 560))
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(Path(sys.executable).parent / "lrsvqa"),
        "distill",
        "--cpu",
        "--model",
        str(tmp_path / "model"),
        "--data",
        str(data),
        "--out",
        str(out),
        "--rfm-layers",
        "0,1",
        "--pairs",
        "0:2,1:5",
        "--steps",
        "24",
        "--lr",
        "5e-3",
        "--log-every",
        "4",
        "--save-every",
        "12",
        "--eval-size",
        "8",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["num_processes"] == 2 and report["steps"] == 24
    assert report["after"]["overlap"] > report["before"]["overlap"]
    assert report["after"]["kl"] < report["before"]["kl"]
    assert report["last_loss"] < report["first_loss"]
    # Each process reads half of the 8 dialogues per epoch: 4 steps are one epoch.
    first = _log(out)[0]
    assert (first["step"], first["epoch"]) == (4, 1.0)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step_0000012",
        "step_0000024",
    ]
    assert (out / WEIGHTS_NAME).is_file()


def test_pooled_official_rfm_distils_and_loads(tmp_path, one_thread):
    adapter = _adapter()
    train = write_toy_dataset(tmp_path / "train", 3, seed=0, size_range=(500, 672))
    out = tmp_path / "rfm"
    report = distill(
        DistillConfig(
            model=adapter,
            data=train,
            out_dir=out,
            rfm_layers=[1, 3],
            steps=2,
            save_every=0,
            eval_size=2,
            hr_pool=2,
            newline=False,
            progress=False,
        )
    )
    assert report.after is not None and report.last_loss > 0
    config = json.loads((out / "rfm_config.json").read_text())
    # The official structure: a leading copy of layer 0; default pairs first and last.
    assert config["layer_indices"] == [0, 1, 3] and config["structure"] == "official"
    assert config["distill_pairs"] == [[0, 0], [2, 3]]
    assert len(RegionFocusModule.load(out, adapter).layers) == 3
    # The recipe, losses and agreement go into the config and the model card.
    training = config["training"]
    assert training["data"] == str(train.resolve()) and training["steps"] == 2
    assert training["loss_weights"] == {"hr": 2.0, "mse": 1.0, "kl": 1.0}
    assert training["after"]["overlap"] == report.after.overlap
    card = (out / "README.md").read_text()
    assert "layers [0, 1, 3]" in card and "final_losses" in card and "after" in card


@pytest.mark.slow
def test_resume_refuses_a_planted_pickle_through_the_api_and_the_cli(tmp_path, one_thread):
    from typer.testing import CliRunner

    from lrsvqa.app.cli import app
    from tests.test_train_loop import plant_pickle
    from tests.test_trust import one_line_error

    model, processor = build_tiny_llava(TOY_WORDS, num_layers=6, seed=0)
    save_tiny_llava(model, processor, tmp_path / "model")
    data = write_toy_dataset(tmp_path / "data", 2, seed=3, size_range=(300, 400))
    out = tmp_path / "out"

    def config(**changes) -> DistillConfig:
        settings = dict(
            model=str(tmp_path / "model"),
            data=data,
            out_dir=out,
            rfm_layers=RFM_LAYERS,
            pairs=PAIRS,
            steps=2,
            save_every=1,
            progress=False,
        )
        return DistillConfig(**{**settings, **changes})

    assert distill(config(stop_after=1)).steps == 1
    folder = out / "checkpoints" / "step_0000001"
    assert not [p for p in folder.rglob("*") if p.suffix in (".pkl", ".bin", ".pt")]
    marker = tmp_path / "pwned"
    planted = plant_pickle(folder, marker)
    with pytest.raises(CheckpointError, match="pickle"):
        distill(config(resume=True))
    assert not marker.exists()
    command = ["distill", "--model", str(tmp_path / "model"), "--data", str(data)]
    command += ["--out", str(out), "--rfm-layers", "0,1", "--pairs", "0:2,1:5", "--steps", "2"]
    result = CliRunner().invoke(app, [*command, "--save-every", "1", "--resume"])
    one_line_error(result, str(planted), "pickle-format file")
    assert not marker.exists()
    # Without the planted file the same command resumes and finishes.
    planted.unlink()
    result = CliRunner().invoke(app, [*command, "--save-every", "1", "--resume"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "report.json").read_text())["start_step"] == 1
