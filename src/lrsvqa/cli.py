"""The ``lrsvqa`` command line: one sub-command per task, each a thin layer over the library."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="lrsvqa",
    help="Answer questions about very large remote-sensing images by looking where the question points.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def main() -> None:
    """lrsvqa: coarse-to-fine text-guided token pruning for LVLMs on large images."""
