"""The one strategy registry: typed options, the listing, eval and flops from one list."""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from lrsvqa.app.cli import app
from lrsvqa.flops import TokenCount
from lrsvqa.strategies.base import StrategyResult
from lrsvqa.strategies.options import C2FOptions, FastVOptions, PDropOptions
from lrsvqa.strategies.registry import (
    ModelOptions,
    NoOptions,
    option,
    parse_options,
    register_strategy,
    strategy_entry,
)
from tests.tiny_models import builtin_strategies

LLAVA_NEXT_QWEN2 = {
    "model_type": "llava_next",
    "text_config": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28},
    "vision_config": {"image_size": 336, "patch_size": 14},
}


def test_key_value_strings_are_converted_by_the_declared_types():
    model, fastv = parse_options(
        "fastv", FastVOptions, {"model_path": "m", "max_new_tokens": "3", "layer": "5"}
    )
    assert model == ModelOptions(model_path="m", max_new_tokens=3)
    assert fastv == FastVOptions(layer=5)
    _, pdrop = parse_options("pdrop", PDropOptions, {"layers": "7, 14,21", "ratio": "0.25"})
    assert pdrop.layers == (7, 14, 21) and pdrop.ratio == 0.25
    assert parse_options("pdrop", PDropOptions, {"layers": "[7, 14]"})[1].layers == (7, 14)
    assert parse_options("pdrop", PDropOptions, {"layers": "none"})[1].layers is None
    _, c2f = parse_options("c2f", C2FOptions, {"fixed_layers": "3", "rfm_path": Path("r")})
    assert c2f.fixed_layers == 3 and c2f.rfm_path == "r"
    # Typed values from Python go through the same checks.
    assert parse_options("fastv", FastVOptions, {"ratio": 1})[1].ratio == 1.0


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"layer": "two"}, "'layer' expects an integer, got 'two'"),
        ({"layer": True}, "'layer' expects an integer"),
        ({"ratio": "half"}, "'ratio' expects a number"),
        ({"ratio": "1.5"}, "ratio must be in [0, 1], got 1.5"),
        ({"grid_tiles": "0"}, "grid_tiles must be >= 1"),
        ({"alpha": "0.3"}, "has no option 'alpha' (its options: grid_tiles, layer, ratio)"),
        ({"max_new_tokens": "many"}, "'max_new_tokens' expects an integer"),
    ],
)
def test_bad_options_are_one_line_errors_naming_the_option(values, named):
    with pytest.raises(ValueError) as error:
        parse_options("fastv", FastVOptions, values)
    message = str(error.value)
    assert named in message and message.startswith("strategy 'fastv'")
    assert "\n" not in message


def test_tuple_and_optional_errors_name_the_option():
    with pytest.raises(ValueError, match="'layers' expects a list of int, got '7,x'"):
        parse_options("pdrop", PDropOptions, {"layers": "7,x"})
    with pytest.raises(ValueError, match="dip_rule must be one of"):
        parse_options("c2f", C2FOptions, {"dip_rule": "sideways"})


def test_listing_names_every_registered_strategy_with_its_options():
    names = builtin_strategies()
    assert "fullres" in names and "c2f" in names and "anyres-p144" in names
    result = CliRunner().invoke(app, ["strategies", "--format", "json"])
    assert result.exit_code == 0, result.output
    listed = {row["name"]: row for row in json.loads(result.output)}
    assert set(names) <= set(listed) and "(model)" in listed
    c2f = {opt["name"]: opt for opt in listed["c2f"]["options"]}
    assert c2f["alpha"] == {
        "name": "alpha",
        "type": "float",
        "default": 0.25,
        "help": "Share of tokens kept at each level.",
    }
    assert c2f["max_tiles"]["default"] == 80 and c2f["min_short_side"]["default"] == 1008
    pdrop = {opt["name"]: opt for opt in listed["pdrop"]["options"]}
    assert pdrop["grid_tiles"]["default"] == 144
    assert pdrop["layers"]["type"] == "tuple[int, ...] | None"
    assert listed["fullres"]["options"][0]["default"] == 1024
    table = CliRunner().invoke(app, ["strategies"], terminal_width=200)
    assert table.exit_code == 0 and "fullres" in table.output and "grid_tiles" in table.output


def test_options_must_be_frozen_dataclasses_with_defaults():
    @dataclass
    class Loose:
        x: int = 1

    @dataclass(frozen=True)
    class Required:
        x: int

    @dataclass(frozen=True)
    class Shadows:
        device: str = "cpu"

    for bad, message in ((Loose, "frozen"), (Required, "default"), (Shadows, "model options")):
        with pytest.raises(ValueError, match=message):
            register_strategy("test-bad", lambda m, o: None, options=bad, counter=lambda i, o: 0)


@dataclass(frozen=True)
class EchoOptions:
    tokens: int = option(7, "Vision tokens it claims to feed the LLM.")
    word: str = option("yes", "Its answer to everything.")


class EchoStrategy:
    """Answers one word whatever the image; its counter agrees with what it reports."""

    name = "test-echo"

    def __init__(self, model: ModelOptions, options: EchoOptions) -> None:
        self.options = options

    def prepare(self, image_path):
        return Path(image_path).name

    def answer(self, prepared, question):
        n = self.options.tokens
        return StrategyResult(self.options.word, n, n + 5, n, tflops=0.0)


def count_echo(image, options: EchoOptions) -> TokenCount:
    return TokenCount("test-echo", options.tokens, (options.tokens,) * image.dims.num_layers)


def test_a_registered_strategy_is_evaluated_counted_and_listed(tmp_path):
    register_strategy(
        "test-echo", EchoStrategy, options=EchoOptions, counter=count_echo, replace=True
    )
    assert strategy_entry("test-echo").option_names == {"tokens", "word"}
    config = tmp_path / "config.json"
    config.write_text(json.dumps(LLAVA_NEXT_QWEN2))
    runner = CliRunner()
    flops = ["flops", "--config", str(config), "--strategies", "test-echo,thumbnail"]
    counted = runner.invoke(app, [*flops, "--option", "tokens=11", "--format", "json"])
    assert counted.exit_code == 0, counted.output
    rows = {row["strategy"]: row for row in json.loads(counted.output)}
    assert rows["test-echo"]["vision_tokens_to_llm"] == 11
    assert rows["thumbnail"]["vision_tokens_to_llm"] == 576  # tokens= is not one of its options
    unused = runner.invoke(app, [*flops, "--option", "nothing=1"])
    assert unused.exit_code != 0 and "nothing" in unused.output

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    row = {"question_id": "T_1", "image": "a.png", "category": "reasoning", "text": "Q?"}
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps(row | {"ground_truth": "no"}) + "\n", encoding="utf-8")
    output = tmp_path / "answers.jsonl"
    args = ["eval", "--data-root", str(tmp_path), "--questions", str(questions), "--no-score"]
    args += ["--strategy", "test-echo", "--model", "m", "-o", str(output), "--no-progress"]
    evaluated = runner.invoke(
        app, [*args, "--strategy-option", "tokens=11", "--strategy-option", "word=no"]
    )
    assert evaluated.exit_code == 0, evaluated.output
    record = json.loads(output.read_text().splitlines()[0])
    assert record["answer"] == "no" and record["vision_tokens_to_llm"] == 11
    bad = runner.invoke(app, [*args, "--strategy-option", "tokens=many"])
    assert bad.exit_code != 0 and "'tokens' expects an integer" in bad.output

    listing = runner.invoke(app, ["strategies", "--format", "json"])
    echo = {row["name"]: row for row in json.loads(listing.output)}["test-echo"]
    assert [(o["name"], o["type"], o["default"]) for o in echo["options"]] == [
        ("tokens", "int", 7),
        ("word", "str", "yes"),
    ]


def test_no_model_path_is_a_one_line_error():
    with pytest.raises(ValueError, match="needs a model path"):
        strategy_entry("thumbnail").build()
    assert strategy_entry("thumbnail").options is NoOptions
