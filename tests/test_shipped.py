"""The embedded default as shipped: export, checksums, the recipe check, package data."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lrsvqa.app.cli import app
from lrsvqa.app.default_model import DefaultModelConfig
from lrsvqa.app.shipped import (
    MANIFEST_NAME,
    SHIPPED_DIR,
    SMOKE_RECIPE,
    StaleDefaultError,
    read_manifest,
    resolve_default_model,
    shipped_default,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """``lrsvqa build-default --smoke --out DIR``: the CI smoke run of the real code path."""
    out = tmp_path_factory.mktemp("default")
    result = CliRunner().invoke(app, ["build-default", "--smoke", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_build_default_writes_the_shipped_layout_with_a_manifest(exported: Path) -> None:
    manifest = read_manifest(exported)
    assert manifest["sft_key"] == SMOKE_RECIPE.sft_key()
    assert manifest["distill_key"] == SMOKE_RECIPE.distill_key()
    assert manifest["recipe"]["sft_steps"] == SMOKE_RECIPE.sft_steps
    assert manifest["world_generator_version"] >= 4
    assert manifest["training_seconds"]["sft"] > 0
    assert manifest["final_losses"]["sft_loss_last"] > 0
    names = set(manifest["files"])
    assert "model/model.safetensors" in names
    assert any(n.startswith("rfm-") and n.endswith(".safetensors") for n in names)
    assert not [n for n in names if n.endswith((".bin", ".pkl", ".pt", ".jsonl"))]
    on_disk = {
        p.relative_to(exported).as_posix()
        for p in exported.rglob("*")
        if p.is_file() and p.name != MANIFEST_NAME and "build" not in p.relative_to(exported).parts
    }
    assert on_disk == names


def test_shipped_folder_loads_and_answers_offline(exported: Path, monkeypatch) -> None:
    from lrsvqa.app.inference import load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    trained = shipped_default(SMOKE_RECIPE, root=exported)
    loaded = load_model(trained.model_dir, trained.rfm_dir)
    assert loaded.rfm.rfm_config.layer_indices == list(SMOKE_RECIPE.rfm_layers)


def test_a_stale_or_altered_shipped_folder_is_refused(exported: Path, tmp_path: Path) -> None:
    with pytest.raises(StaleDefaultError, match="another recipe"):
        shipped_default(replace(SMOKE_RECIPE, sft_steps=5), root=exported)
    copy = tmp_path / "copy"
    shutil.copytree(exported, copy, ignore=shutil.ignore_patterns("build"))
    weights = copy / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(StaleDefaultError, match="checksum"):
        shipped_default(SMOKE_RECIPE, root=copy)
    assert shipped_default(SMOKE_RECIPE, root=tmp_path / "nothing") is None


def test_a_recipe_other_than_the_default_is_built_not_taken_from_the_package(
    exported: Path,
) -> None:
    built = resolve_default_model(exported / "build", SMOKE_RECIPE, log=lambda _: None)
    assert built.root.parent == exported / "build"


def test_the_shipped_default_was_trained_by_the_code_recipe() -> None:
    """Changing the recipe without retraining (`lrsvqa build-default`) fails here."""
    manifest = read_manifest(SHIPPED_DIR)
    assert manifest is not None, f"no shipped default in {SHIPPED_DIR}"
    config = DefaultModelConfig()
    assert manifest["recipe"] == json.loads(json.dumps(config.recipe()))
    assert shipped_default(config) is not None  # keys and every checksum


def test_the_wheel_carries_the_shipped_default(tmp_path: Path) -> None:
    manifest = read_manifest(SHIPPED_DIR)
    assert manifest is not None
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("lrsvqa-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    prefix = "lrsvqa/app/shipped_default/"
    assert prefix + MANIFEST_NAME in names
    assert {prefix + name for name in manifest["files"]} <= names


def test_build_default_seed_changes_only_the_training_seed(monkeypatch, tmp_path: Path) -> None:
    """``--seed N`` builds the recipe with another training seed, hence another model hash."""
    import lrsvqa.app.default_model as default_model

    built: list[DefaultModelConfig] = []

    def record(home, config, log):
        built.append(config)
        return default_model.DefaultModel(tmp_path, config.distill_key())

    monkeypatch.setattr(default_model, "build_default_model", record)
    result = CliRunner().invoke(app, ["build-default", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert built == [replace(DefaultModelConfig(), seed=3)]
    assert built[0].sft_key() != DefaultModelConfig().sft_key()
    assert built[0].world_options() == DefaultModelConfig().world_options()


def test_build_default_set_changes_recipe_fields_by_their_type(monkeypatch, tmp_path) -> None:
    """``--set FIELD=VALUE`` reads each value by its field's type; bad ones are usage errors."""
    import lrsvqa.app.default_model as default_model

    built: list[DefaultModelConfig] = []

    def record(home, config, log):
        built.append(config)
        return default_model.DefaultModel(tmp_path, config.distill_key())

    monkeypatch.setattr(default_model, "build_default_model", record)
    args = [
        "build-default",
        "--set",
        "hidden_size=256,rfm_layers=0,3,5",
        "--set",
        "distill_lr=3e-4",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    wanted = replace(DefaultModelConfig(), hidden_size=256, rfm_layers=(0, 3, 5), distill_lr=3e-4)
    assert built == [wanted] and wanted.sft_key() != DefaultModelConfig().sft_key()
    for value, problem in [
        ("width=2", "unknown recipe field 'width'"),
        ("hidden_size=2.5", "'hidden_size' takes int, got '2.5'"),
        ("rfm_layers=0,x", "'rfm_layers' takes ints"),
        ("distill_pairs=0,0", "'distill_pairs' cannot be set"),
    ]:
        result = CliRunner().invoke(app, ["build-default", "--set", value])
        assert result.exit_code == 2 and problem in " ".join(result.output.split()), value
    assert len(built) == 1
