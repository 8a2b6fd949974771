"""Hub-style RFMs: save_pretrained / from_pretrained / push_to_hub, model cards, hub ids."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import constants, hub_mixin
from PIL import Image
from safetensors.torch import save_file

from lrsvqa.models.adapter import LlavaAdapter
from lrsvqa.models.checkpoint import model_identity
from lrsvqa.models.rfm import CONFIG_NAME, WEIGHTS_NAME, RegionFocusModule, RFMLoadError
from lrsvqa.models.tiny import build_tiny_llava, save_tiny_llava
from tests.tiny_models import WORDS

SAVED_FILES = {"README.md", CONFIG_NAME, WEIGHTS_NAME}


@pytest.fixture(scope="module")
def adapter():
    model, processor = build_tiny_llava(WORDS)
    return LlavaAdapter(model, processor)


def _trained(adapter, base_model="org/tiny-llava") -> RegionFocusModule:
    rfm = RegionFocusModule.from_llm(adapter, [0, 2], base_model=base_model)
    with torch.no_grad():
        for parameter in rfm.parameters():
            parameter.add_(0.01)
    rfm.rfm_config.training = {"data": "/data/sft.json", "loss_weights": {"hr": 2.0}}
    return rfm


def _same_weights(a: RegionFocusModule, b: RegionFocusModule) -> bool:
    one, other = a.layers.state_dict(), b.layers.state_dict()
    return one.keys() == other.keys() and all(torch.equal(one[k], other[k]) for k in one)


def test_save_pretrained_round_trip_writes_safetensors_config_and_card(adapter, tmp_path):
    rfm = _trained(adapter)
    rfm.save_pretrained(tmp_path / "rfm")
    assert {p.name for p in (tmp_path / "rfm").iterdir()} == SAVED_FILES  # no pickle
    loaded = RegionFocusModule.from_pretrained(tmp_path / "rfm", adapter=adapter)
    assert _same_weights(loaded, rfm) and loaded.rfm_config == rfm.rfm_config
    card = (tmp_path / "rfm" / "README.md").read_text()
    assert card.startswith("---\nbase_model: org/tiny-llava\nlibrary_name: lrsvqa\n")
    assert "copies of LLM layers [0, 2]" in card and "/data/sft.json" in card
    assert '- loss_weights: `{"hr": 2.0}`' in card


def test_rfm_folders_saved_before_the_mixin_still_load(adapter, tmp_path):
    rfm = RegionFocusModule.from_llm(adapter, [1, 3], structure="selected")
    old = tmp_path / "old"
    old.mkdir()
    save_file({k: v.contiguous() for k, v in rfm.layers.state_dict().items()}, old / WEIGHTS_NAME)
    config = {k: v for k, v in vars(rfm.rfm_config).items() if k != "training"}
    (old / CONFIG_NAME).write_text(json.dumps(config | {"base_model": "./model"}))
    loaded = RegionFocusModule.from_pretrained(old, adapter=adapter)
    assert _same_weights(loaded, rfm) and loaded.rfm_config.base_model == "./model"


def test_base_model_is_recorded_as_hub_id_or_absolute_path(tmp_path, monkeypatch):
    (tmp_path / "model").mkdir()
    monkeypatch.chdir(tmp_path)
    assert model_identity("./model") == str(tmp_path / "model")
    snapshot = tmp_path / "hub" / "models--org--name" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    assert model_identity(snapshot) == "org/name"
    assert model_identity("org/name") == "org/name"


def _fake_hub_cache(rfm: RegionFocusModule, cache: Path, repo_id: str) -> None:
    """An RFM as ``snapshot_download`` leaves it in the Hugging Face cache."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    rfm.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_from_pretrained_resolves_a_hub_id_from_the_offline_cache(adapter, tmp_path, monkeypatch):
    rfm = _trained(adapter)
    _fake_hub_cache(rfm, tmp_path / "hub", "someone/tiny-rfm")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    loaded = RegionFocusModule.from_pretrained("someone/tiny-rfm", adapter=adapter)
    assert _same_weights(loaded, rfm)
    with pytest.raises(RFMLoadError, match="someone/other: no such folder, and as a hub id not "):
        RegionFocusModule.from_pretrained("someone/other", adapter=adapter)


def test_push_to_hub_uploads_the_saved_folder(adapter, monkeypatch):
    uploaded: dict = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            return type("Repo", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, **kwargs):
            uploaded["repo_id"] = repo_id
            uploaded["files"] = {p.name for p in Path(folder_path).iterdir()}
            return "https://huggingface.co/someone/tiny-rfm/commit/1"

    monkeypatch.setattr(hub_mixin, "HfApi", FakeApi)
    assert _trained(adapter).push_to_hub("someone/tiny-rfm").endswith("/commit/1")
    assert uploaded == {"repo_id": "someone/tiny-rfm", "files": SAVED_FILES}


def test_ask_takes_an_rfm_hub_id_from_the_cache(adapter, tmp_path):
    model_dir = save_tiny_llava(adapter.model, adapter.processor, tmp_path / "model")
    _fake_hub_cache(_trained(adapter), tmp_path / "hub", "someone/tiny-rfm")
    Image.fromarray(np.zeros((400, 300, 3), np.uint8)).save(tmp_path / "scene.png")
    environ = os.environ | {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-c", "from lrsvqa.app.cli import app; app()"]
    ask = [*cli, "ask", str(tmp_path / "scene.png"), "q"]
    ask += ["--model", str(model_dir), "--max-new-tokens", "1", "--json"]
    found = subprocess.run(
        [*ask, "--rfm", "someone/tiny-rfm"], env=environ, capture_output=True, text=True
    )
    assert found.returncode == 0, found.stderr
    assert "answer" in json.loads(found.stdout.strip().splitlines()[-1])
    missing = subprocess.run(
        [*ask, "--rfm", "someone/absent"], env=environ, capture_output=True, text=True
    )
    assert missing.returncode == 2
    assert (
        missing.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "error: someone/absent: no such folder, and as a hub id not in the Hugging Face cache"
        )
    )
