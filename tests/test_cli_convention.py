"""The command line's shared conventions: --version, -o/--out, --format, list style."""

import re

from typer.testing import CliRunner

import lrsvqa
import lrsvqa.version
from lrsvqa.app.cli import app


def test_version_names_release_and_commit():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert re.fullmatch(
        rf"lrsvqa {re.escape(lrsvqa.__version__)} \(commit [0-9a-f]{{40}}(\+dirty)?\)\n",
        result.output,
    )


def test_version_outside_a_checkout_is_the_release_alone(monkeypatch):
    monkeypatch.setattr(lrsvqa.version, "source_commit", lambda: None)
    result = CliRunner().invoke(app, ["--version"])
    assert result.output == f"lrsvqa {lrsvqa.__version__}\n"


def _commands():
    import typer.main

    return typer.main.get_command(app).commands


def test_flags_have_no_double_negatives_and_outputs_are_o_out():
    for name, command in _commands().items():
        for param in command.params:
            flags = [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]
            assert not any(flag.startswith("--no-no-") for flag in flags), (name, flags)
            if param.name == "out":
                assert {"-o", "--out"} <= set(flags), (name, flags)
    assert "out" in {p.name for p in _commands()["eval"].params}


def test_pyramid_help_offers_pixel_limit_without_double_negative():
    result = CliRunner().invoke(app, ["pyramid", "--help"], env={"COLUMNS": "200"})
    assert "--pixel-limit" in result.output and "--no-pixel-limit" in result.output
    assert "no-no" not in result.output


def test_key_values_are_comma_separated_and_list_values_need_no_quotes():
    from lrsvqa.app.cli import _key_values, _names

    given = ["alpha=0.25,rfm_layers=1,5,11,14", "max_tiles=3"]
    assert _key_values(given, "--strategy-option") == {
        "alpha": "0.25",
        "rfm_layers": "1,5,11,14",
        "max_tiles": "3",
    }
    assert _names(["FAIR,STAR", "DOTA"]) == ["FAIR", "STAR", "DOTA"]


def _mme_answers(path, outputs):
    import json

    entry = {
        "Answer choices": ["(A) red", "(B) blue", "(C) white", "(D) green", "(E) none"],
        "Ground truth": "B",
        "Category": "color",
        "Subtask": "Remote Sensing",
    }
    rows = [entry | {"Question_id": f"rs/{i}", "Output": out} for i, out in enumerate(outputs)]
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def test_score_prints_several_answer_files_side_by_side(tmp_path):
    a = _mme_answers(tmp_path / "c2f.json", ["B", "B", "B", "A"])
    b = _mme_answers(tmp_path / "fastv.json", ["A", "B", "A", "A"])
    out = tmp_path / "reports" / "runs.csv"
    args = ["score", str(a), str(b), "--format", "csv", "-o", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "accuracy (%),c2f,fastv"
    assert "color,75.00,25.00" in lines
    assert out.read_text() == result.output
    table = CliRunner().invoke(app, ["score", str(a), str(b)], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "c2f" in table.output and "fastv" in table.output


def test_score_keeps_its_old_json_spelling(tmp_path):
    import json

    a = _mme_answers(tmp_path / "a.json", ["B", "A"])
    result = CliRunner().invoke(app, ["score", str(a), "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["groups"]["Remote Sensing"]["categories"]["color"]["correct"] == 1
    both = CliRunner().invoke(app, ["score", str(a), "--format", "json"])
    assert json.loads(both.output)["groups"]["Remote Sensing"]["items"] == 2


def test_strategies_and_flops_print_csv():
    result = CliRunner().invoke(app, ["strategies", "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "strategy,option,type,default,help"
    assert any(line.startswith("c2f,alpha,") for line in result.output.splitlines())
