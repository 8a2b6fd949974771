"""The ``lrsvqa`` command line: one sub-command per task, each a thin layer over the library."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    name="lrsvqa",
    help="Answer questions about very large remote-sensing images by looking where it matters.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def main() -> None:
    """lrsvqa: coarse-to-fine text-guided token pruning for LVLMs on large images."""


def _int_list(text: str | None) -> list[int] | None:
    """Parse ``"1,5,11,14"``."""
    if not text:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from error


@app.command()
def ask(
    image: Path = typer.Argument(..., help="Large image (GeoTIFF/TIFF/PNG/JPEG)."),
    question: str = typer.Argument(..., help="The question."),
    model: str = typer.Option(..., "--model", help="LLaVA checkpoint folder or hub id."),
    rfm: Path | None = typer.Option(None, help="Trained RFM folder; training-free if omitted."),
    rfm_layers: str | None = typer.Option(None, help="Training-free RFM layers, e.g. 1,5,11,14."),
    alpha: float = typer.Option(0.25, help="Proportion of tokens kept at each level."),
    max_tiles: int = typer.Option(80, help="N_max: prune instead of descending past this."),
    fixed_layers: int | None = typer.Option(None, help="Fix DIP layers reached (Tab. 6)."),
    min_short_side: int = typer.Option(1008, help="DIP: halve until the short side is this."),
    max_new_tokens: int = typer.Option(32, help="Generation budget."),
    dtype: str = typer.Option("float32", help="float32, bfloat16, float16 or auto."),
    device: str = typer.Option("cpu", help="Torch device."),
    overlay: Path | None = typer.Option(None, help="Write a PNG of attention + selected tiles."),
    json_out: bool = typer.Option(False, "--json", help="Print the trace as JSON."),
) -> None:
    """Answer a question about a large image with coarse-to-fine inference.

    Example: lrsvqa ask scene.tif "What is the color of the ship?" --model ./llava --overlay o.png
    """
    import json

    from rich.console import Console

    from lrsvqa.inference import ask as run_ask
    from lrsvqa.inference import load_model, trace_table
    from lrsvqa.pruning.coarse_to_fine import CoarseToFineConfig

    console = Console()
    config = CoarseToFineConfig(
        alpha=alpha, max_tiles=max_tiles, fixed_layers=fixed_layers, max_new_tokens=max_new_tokens
    )
    loaded = load_model(model, rfm, rfm_layers=_int_list(rfm_layers), dtype=dtype, device=device)
    result, reader = run_ask(loaded, image, question, config, min_short_side=min_short_side)
    if json_out:
        print(json.dumps({"answer": result.answer, **result.trace_dict()}))
    else:
        console.print(f"[bold]Q:[/bold] {question}\n[bold]A:[/bold] {result.answer}")
        console.print(trace_table(result))
    if overlay is not None:
        from lrsvqa.viz import save_attention_overlay

        save_attention_overlay(
            overlay,
            reader.thumbnail(),
            reader.geometry,
            result.coarse_scores,
            result.selected_boxes,
            title=f"{question}\n{result.answer}",
        )
        console.print(f"overlay written to {overlay}")
