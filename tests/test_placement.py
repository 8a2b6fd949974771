"""``--device auto`` / ``--dtype auto`` and the loading options the CLI passes through."""

import types

import pytest
import torch
from typer.testing import CliRunner

from lrsvqa.app.cli import app
from lrsvqa.errors import OptionError
from lrsvqa.models.adapter import LlavaAdapter
from lrsvqa.models.placement import checkpoint_dtype, resolve_device, resolve_dtype
from lrsvqa.models.tiny import build_tiny_llava, save_tiny_llava
from lrsvqa.strategies.registry import ModelOptions
from tests.tiny_models import WORDS


def _machine(monkeypatch, cuda: bool, mps: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")],
)
def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    _machine(monkeypatch, cuda, mps)
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"  # an explicit device is kept
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_auto_dtype_is_the_checkpoints_on_gpu_and_float32_on_cpu(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_dtype("auto", cuda, torch.float16) is torch.float16
    assert resolve_dtype("auto", cuda, None) is torch.bfloat16
    assert resolve_dtype("auto", torch.device("mps"), None) is torch.bfloat16
    assert resolve_dtype("auto", cpu, torch.bfloat16) is torch.float32
    assert resolve_dtype("bf16", cpu) is torch.bfloat16
    _machine(monkeypatch, cuda=True, mps=False)
    assert resolve_dtype("auto") is torch.bfloat16  # no device given: auto's device
    with pytest.raises(OptionError, match="--dtype: unknown dtype 'float8'"):
        resolve_dtype("float8", cpu)


def test_checkpoint_dtype_reads_dtype_or_torch_dtype():
    assert checkpoint_dtype(types.SimpleNamespace(dtype="bfloat16")) is torch.bfloat16
    assert checkpoint_dtype(types.SimpleNamespace(torch_dtype="torch.float16")) is torch.float16
    assert checkpoint_dtype(types.SimpleNamespace(dtype=torch.float32)) is torch.float32
    assert checkpoint_dtype(types.SimpleNamespace()) is None


def test_strategies_default_to_auto():
    assert (ModelOptions().device, ModelOptions().dtype) == ("auto", "auto")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model, processor = build_tiny_llava(WORDS)
    return save_tiny_llava(model, processor, tmp_path_factory.mktemp("placement") / "model")


def test_adapter_loads_with_attn_implementation_and_device_map(model_dir):
    adapter = LlavaAdapter.from_pretrained(model_dir, attn_implementation="eager", device_map="cpu")
    assert adapter.model.config._attn_implementation == "eager"
    assert adapter.device.type == "cpu" and adapter.dtype is torch.float32  # auto on CPU


def _spy_from_pretrained(monkeypatch) -> list[dict]:
    calls: list[dict] = []
    original = LlavaAdapter.from_pretrained.__func__

    def spy(cls, path, **kwargs):
        calls.append(kwargs)
        return original(cls, path, **kwargs)

    monkeypatch.setattr(LlavaAdapter, "from_pretrained", classmethod(spy))
    return calls


def test_ask_passes_loading_options_through(model_dir, tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((400, 300, 3), np.uint8)).save(tmp_path / "scene.png")
    calls = _spy_from_pretrained(monkeypatch)
    args = ["ask", str(tmp_path / "scene.png"), "how many ships?", "--model", str(model_dir)]
    args += ["--max-new-tokens", "1", "--attn-implementation", "eager", "--device-map", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert calls == [
        {"dtype": "auto", "device": "auto", "attn_implementation": "eager", "device_map": "cpu"}
    ]


def test_ask_reports_a_bad_dtype_in_one_line(model_dir, tmp_path):
    result = CliRunner().invoke(
        app, ["ask", "x.png", "q", "--model", str(model_dir), "--dtype", "float8"]
    )
    assert result.exit_code == 2
    assert "error: --dtype: unknown dtype 'float8'" in result.output


def test_eval_passes_loading_options_to_the_strategy(tmp_path, monkeypatch):
    import lrsvqa.bench.runner as runner

    seen: list[dict] = []

    def fake_evaluate(config):
        seen.append(config.strategy_options)
        raise SystemExit(0)

    monkeypatch.setattr(runner, "evaluate", fake_evaluate)
    args = ["eval", "--data-root", str(tmp_path), "--strategy", "c2f", "--model", "m"]
    args += ["--attn-implementation", "sdpa", "--device-map", "auto", "--dtype", "bf16"]
    CliRunner().invoke(app, args)
    assert seen == [
        {"model_path": "m", "dtype": "bf16", "device_map": "auto", "attn_implementation": "sdpa"}
    ]
