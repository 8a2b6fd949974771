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
