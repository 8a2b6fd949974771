"""The ``lrsvqa`` command line: one sub-command per task, each a thin layer over the library.

Errors: the project's own error types (:mod:`lrsvqa.errors`: bad image, question or
answers file, model or RFM that cannot load, bad option value, unsafe path, another
run's answers file) print ``error: <file>: <problem>`` on one line and exit with
status 2; anything else is a bug and keeps its traceback. ``--debug`` (or
``LRSVQA_DEBUG=1``) shows the traceback always.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from lrsvqa.bench.scoring import DEFAULT_RULE, RULES
from lrsvqa.budgets import DEFAULT_ALPHA, DEFAULT_MAX_NEW_TOKENS, DEFAULT_MAX_TILES
from lrsvqa.errors import LrsvqaError, OptionError
from lrsvqa.imagery.pyramid import DEFAULT_DIP_RULE, DIP_RULES, PyramidConfig
from lrsvqa.imagery.tiles import MAX_TILE_SIZE
from lrsvqa.models.placement import DEFAULT_DEVICE, DEFAULT_DTYPE

# ``--rule`` choices: the open-ended scoring rules of lrsvqa.bench.scoring.
ScoringRule = Enum("ScoringRule", {rule: rule for rule in RULES}, type=str)
DEFAULT_SCORING_RULE = ScoringRule(DEFAULT_RULE)
# ``--dip-rule`` choices: how the DIP levels are built (lrsvqa.imagery.pyramid.level_sizes).
DipRule = Enum("DipRule", {rule: rule for rule in DIP_RULES}, type=str)
DEFAULT_DIP = DipRule(DEFAULT_DIP_RULE)
_DIP_HELP = "DIP levels: official (long side, the code's) or paper-text (short side)."
_HR_POOL_HELP = "Pool high-res tile tokens by this stride (2 = the paper's; default: config)."
_POOL_MODE_HELP = "How tiles are pooled: bilinear, average or max (default: the config's)."
_NEWLINE_HELP = "Feed row-end (image_newline) tokens (--no-newline: none)."
# ``--format`` of every command that prints results.
OutputFormat = Enum("OutputFormat", {name: name for name in ("table", "json", "csv")}, type=str)
_FORMAT_HELP = "How results print: table, json or csv."
_BANDS_HELP = "Bands shown as RGB, 1-based as in GDAL, e.g. 4,3,2 (default: from the file)."
_DEVICE_HELP = "Torch device, e.g. cuda:1; auto: CUDA, then MPS, then the CPU."
_DTYPE_HELP = "float32, bfloat16 or float16; auto: the checkpoint's on a GPU, float32 on CPU."
_ATTN_HELP = "Attention kernel: sdpa, eager, flash_attention_2, ... (default: transformers')."
_DEVICE_MAP_HELP = "transformers device_map, e.g. auto: spread over the GPUs (then no --device)."

DEBUG_ENV = "LRSVQA_DEBUG"
#: Exit status of an error in the user's input (as for bad usage).
INPUT_ERROR_STATUS = 2


def _debugging(ctx: typer.Context) -> bool:
    """Whether ``--debug`` or ``LRSVQA_DEBUG`` asks for tracebacks."""
    flag = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")
    return flag or bool(ctx.meta.get("lrsvqa.debug"))


class _ErrorBoundary(TyperGroup):
    """The one place where the project's errors become ``error: <file>: <problem>``."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LrsvqaError as error:
            if _debugging(ctx):
                raise
            typer.echo(f"error: {' '.join(str(error).split())}", err=True)
            raise typer.Exit(INPUT_ERROR_STATUS) from error
        except typer.BadParameter as error:  # a bad or missing option value: one line too
            if _debugging(ctx):
                raise
            typer.echo(f"error: {' '.join(error.format_message().split())}", err=True)
            raise typer.Exit(error.exit_code) from error


app = typer.Typer(
    name="lrsvqa",
    cls=_ErrorBoundary,
    help="Answer questions about very large remote-sensing images by looking where it matters.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _print_version(value: bool) -> None:
    """``--version``: print the release (and commit) and stop before any command."""
    if value:
        from lrsvqa.version import version_line

        typer.echo(version_line())
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    debug: bool = typer.Option(
        False, "--debug", help=f"Show tracebacks of input errors too (or set {DEBUG_ENV}=1)."
    ),
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the lrsvqa version (and git commit) and exit.",
    ),
) -> None:
    """lrsvqa: coarse-to-fine text-guided token pruning for LVLMs on large images."""
    ctx.meta["lrsvqa.debug"] = debug


def _pool_mode(text: str | None) -> str | None:
    """Check ``--hr-pool-mode`` against the adapter's modes (imported only when given)."""
    if text is None:
        return None
    from lrsvqa.models.adapter import POOL_MODES

    if text not in POOL_MODES:
        raise typer.BadParameter(
            f"choose one of {', '.join(POOL_MODES)}, got {text!r}", param_hint="--hr-pool-mode"
        )
    return text


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
    image: str = typer.Argument(..., help="Large image (GeoTIFF/TIFF/PNG/JPEG, JP2, VRT, URL)."),
    question: str = typer.Argument(..., help="The question."),
    model: str = typer.Option(..., "--model", help="LLaVA checkpoint folder or hub id."),
    rfm: str | None = typer.Option(
        None, help="Trained RFM folder or hub id; training-free if omitted."
    ),
    rfm_layers: str | None = typer.Option(None, help="Training-free RFM layers, e.g. 1,5,11,14."),
    alpha: float = typer.Option(DEFAULT_ALPHA, help="Proportion of tokens kept at each level."),
    max_tiles: int = typer.Option(
        DEFAULT_MAX_TILES, help="N_max: prune instead of descending past this."
    ),
    fixed_layers: int | None = typer.Option(None, help="Fix DIP layers reached (Tab. 6)."),
    min_short_side: int = typer.Option(
        PyramidConfig.min_short_side, help="DIP: bound of the coarsest level, px."
    ),
    dip_rule: DipRule = typer.Option(DEFAULT_DIP, help=_DIP_HELP),
    hr_pool: int | None = typer.Option(None, min=1, help=_HR_POOL_HELP),
    hr_pool_mode: str | None = typer.Option(None, help=_POOL_MODE_HELP),
    newline: bool = typer.Option(True, "--newline/--no-newline", help=_NEWLINE_HELP),
    max_new_tokens: int = typer.Option(DEFAULT_MAX_NEW_TOKENS, help="Generation budget."),
    dtype: str = typer.Option(DEFAULT_DTYPE, help=_DTYPE_HELP),
    device: str = typer.Option(DEFAULT_DEVICE, help=_DEVICE_HELP),
    attn_implementation: str | None = typer.Option(None, help=_ATTN_HELP),
    device_map: str | None = typer.Option(None, help=_DEVICE_MAP_HELP),
    overlay: Path | None = typer.Option(None, help="Write a PNG of attention + selected tiles."),
    output_format: OutputFormat = typer.Option(
        OutputFormat.table, "--format", help=f"{_FORMAT_HELP} (csv: the per-level trace)."
    ),
    json_alias: bool = typer.Option(False, "--json", hidden=True),
    geojson: Path | None = typer.Option(
        None, help="Write the tiles and retained tokens as GeoJSON in the image's CRS."
    ),
    bands: str | None = typer.Option(None, help=_BANDS_HELP),
) -> None:
    """Answer a question about a large image with coarse-to-fine inference.

    Example: lrsvqa ask scene.tif "What is the color of the ship?" --model ./llava --overlay o.png
    """
    import json

    from rich.console import Console

    from lrsvqa.app.inference import ask as run_ask
    from lrsvqa.app.inference import load_model, trace_geojson, trace_rows, trace_table
    from lrsvqa.bench.reports import rows_to_csv
    from lrsvqa.strategies.c2f import CoarseToFineConfig

    console = Console()
    config = CoarseToFineConfig(
        alpha=alpha, max_tiles=max_tiles, fixed_layers=fixed_layers, max_new_tokens=max_new_tokens
    )
    loaded = load_model(
        model,
        rfm,
        rfm_layers=_int_list(rfm_layers),
        dtype=dtype,
        device=device,
        attn_implementation=attn_implementation,
        device_map=device_map,
        hr_pool=hr_pool,
        pool_mode=_pool_mode(hr_pool_mode),
        newline=None if newline else False,
    )
    result, reader = run_ask(
        loaded,
        image,
        question,
        config,
        min_short_side=min_short_side,
        dip_rule=dip_rule.value,
        bands=_int_list(bands),
    )
    image_info = reader.image.describe()
    shown = OutputFormat.json if json_alias else output_format
    if shown is OutputFormat.json:
        print(json.dumps({"answer": result.answer, **result.trace_dict(), "image": image_info}))
    elif shown is OutputFormat.csv:
        print(rows_to_csv(*trace_rows(result)), end="")
    else:
        console.print(f"[bold]Q:[/bold] {question}\n[bold]A:[/bold] {result.answer}")
        console.print(trace_table(result))
        georef = image_info["georeference"]
        console.print(f"image CRS: {georef['crs'] or 'none'}, bands shown {image_info['bands']}")
        if image_info["band_notice"]:
            console.print(f"notice: {image_info['band_notice']}", markup=False)
    if geojson is not None:
        collection = trace_geojson(
            result, reader.geometry, reader.image.georef, loaded.adapter.tokens_per_side
        )
        geojson.write_text(json.dumps(collection), encoding="utf-8")
        console.print(f"GeoJSON written to {geojson}")
    if overlay is not None:
        from lrsvqa.app.viz import save_attention_overlay

        save_attention_overlay(
            overlay,
            reader.thumbnail(),
            reader.geometry,
            result.coarse_scores,
            [(level.level, level.tiles_encoded) for level in result.levels],
            title=f"{question}\n{result.answer}",
        )
        console.print(f"overlay written to {overlay}")


def _key_values(items: list[str], param_hint: str) -> dict[str, str]:
    """Parse ``key=value`` pairs, comma-separated (``alpha=0.25,max_tiles=40``) or repeated.

    A piece without ``=`` continues the value before it, so list values such as
    ``rfm_layers=1,5,11,14`` need no quoting; the registry converts each value by its
    option's type.
    """
    options: dict[str, str] = {}
    for item in items:
        key = None
        for piece in item.split(","):
            name, sep, value = piece.partition("=")
            if sep and name.strip():
                key = name.strip()
                options[key] = value
            elif key is not None:
                options[key] += "," + piece
            else:
                raise typer.BadParameter(f"expected key=value, got {item!r}", param_hint=param_hint)
    return options


def _names(items: list[str]) -> list[str]:
    """Comma-separated names, also from a repeated option: ``["A,B", "C"]`` -> A, B, C."""
    return [name.strip() for item in items for name in item.split(",") if name.strip()]


def _aliased(value: Any, alias: Any, old: str, new: str) -> Any:
    """The value of an option or of its hidden old spelling; refuses both at once."""
    if alias is not None and value is not None:
        raise typer.BadParameter(f"{old} is the old spelling of {new}; give only {new}")
    return value if alias is None else alias


@app.command("eval")
def eval_command(
    data_root: Path = typer.Option(..., help="Folder the question file's image paths start from."),
    strategy: str = typer.Option(..., help="Registered strategy name, e.g. c2f."),
    bench: str = typer.Option("lrs-vqa", help="lrs-vqa (also the synthetic benchmark) or mme-rs."),
    questions: Path | None = typer.Option(
        None, help="Question file (default: LRS_VQA_merged.jsonl / MME_RealWorld_RS.json in it)."
    ),
    out: Path | None = typer.Option(
        None,
        "-o",
        "--out",
        help="Answers file (default: outputs/BENCH-MODEL-STRATEGY-OPTIONSHASH.jsonl).",
    ),
    output_alias: Path | None = typer.Option(None, "--output", hidden=True),
    model: str | None = typer.Option(None, help="Model, passed to the strategy as model_path."),
    rfm: str | None = typer.Option(
        None, help="RFM folder or hub id (c2f strategies), as rfm_path."
    ),
    device: str | None = typer.Option(
        None, help=f"{_DEVICE_HELP} Launched: cuda:LOCAL_RANK. [default: {DEFAULT_DEVICE}]"
    ),
    dtype: str | None = typer.Option(None, help=f"{_DTYPE_HELP} [default: {DEFAULT_DTYPE}]"),
    attn_implementation: str | None = typer.Option(None, help=_ATTN_HELP),
    device_map: str | None = typer.Option(None, help=_DEVICE_MAP_HELP),
    hr_pool: int | None = typer.Option(None, min=1, help=_HR_POOL_HELP),
    hr_pool_mode: str | None = typer.Option(None, help=_POOL_MODE_HELP),
    newline: bool = typer.Option(True, "--newline/--no-newline", help=_NEWLINE_HELP),
    bands: str | None = typer.Option(None, help=_BANDS_HELP),
    strategy_option: list[str] = typer.Option(
        [],
        "--strategy-option",
        help="Strategy options key=value,key=value (see lrsvqa strategies).",
    ),
    subset: list[str] = typer.Option([], help="Only these subsets, comma-separated, e.g. FAIR."),
    prompt: str = typer.Option(
        "official", help="mme-rs prompt: official, paper (no 'The best answer is:') or a template."
    ),
    limit: int | None = typer.Option(None, min=1, help="Only the first N items."),
    rank: int | None = typer.Option(None, min=0, help="Manual sharding: this shard's rank."),
    world_size: int | None = typer.Option(None, min=1, help="Manual sharding: number of shards."),
    retry_errors: bool = typer.Option(False, help="Answer again the items recorded with an error."),
    score: bool = typer.Option(True, help="Score the answers when done."),
    rule: ScoringRule = typer.Option(
        DEFAULT_SCORING_RULE,
        help="Open-ended rule of the per-category rows (OA/AA under both).",
    ),
    progress: bool = typer.Option(True, help="Show a progress bar with ETA."),
) -> None:
    """Answer a benchmark with a strategy, resumably; merge shards and score.

    Rerunning the same command resumes; a file made by another model, RFM, strategy
    option or question file is refused (its run record, ANSWERS.run.json, differs).
    Under torchrun or accelerate launch, each rank answers
    its shard, then rank 0 merges and scores.

    Example: lrsvqa eval --bench lrs-vqa --data-root data --model ./llava --strategy c2f
    """
    from rich.console import Console

    from lrsvqa.bench.datasets import BENCHMARKS
    from lrsvqa.bench.reports import print_report, report_paths
    from lrsvqa.bench.run_record import default_output
    from lrsvqa.bench.runner import EvalConfig, evaluate
    from lrsvqa.strategies.registry import strategy_entry

    if bench not in BENCHMARKS:
        raise typer.BadParameter(f"choose one of {', '.join(BENCHMARKS)}", param_hint="--bench")
    if (rank is None) != (world_size is None):
        raise typer.BadParameter("give both --rank and --world-size, or neither")
    # The one place CLI flags are mapped to option names.
    options: dict[str, object] = {"model_path": model, "rfm_path": rfm}
    options |= {"device": device, "dtype": dtype, "device_map": device_map}
    options |= {"attn_implementation": attn_implementation}
    options |= {"hr_pool": hr_pool, "hr_pool_mode": _pool_mode(hr_pool_mode)}
    options |= {"newline": None if newline else False}
    # As --strategy-option bands=4,3,2 would give it, so both name the same output.
    options |= {"bands": ",".join(map(str, _int_list(bands) or [])) or None}
    options = {key: value for key, value in options.items() if value is not None}
    options |= _key_values(strategy_option, "--strategy-option")
    try:
        strategy_entry(strategy).parse(options)  # bad options fail before any model loads
    except KeyError as error:
        raise typer.BadParameter(error.args[0], param_hint="--strategy") from error
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    config = EvalConfig(
        bench=bench,
        questions=questions or data_root / BENCHMARKS[bench],
        data_root=data_root,
        output=_aliased(out, output_alias, "--output", "--out")
        or default_output(bench, strategy, options),
        strategy=strategy,
        strategy_options=options,
        subsets=_names(subset) or None,
        prompt=prompt,
        limit=limit,
        rank=rank,
        world_size=world_size,
        retry_errors=retry_errors,
        progress=progress,
        score=score,
        rule=rule.value,
    )
    outcome = evaluate(config)
    console = Console()
    run = outcome.run
    console.print(
        f"{run.output}: {run.answered} answered, {run.skipped} already done, "
        f"{run.errors} errors, {run.items} items",
        soft_wrap=True,
    )
    if outcome.answers is None:
        hint = f"rank 0 merges a launched run; otherwise run: lrsvqa merge {config.output}"
        console.print(f"shard written ({hint})", soft_wrap=True)
        return
    if outcome.report is not None:
        print_report(outcome.report, console)
        json_path, markdown_path = report_paths(outcome.answers)
        console.print(
            f"answers: {outcome.answers}\nreports: {json_path}, {markdown_path}", soft_wrap=True
        )


@app.command()
def score(
    answers: list[Path] = typer.Argument(..., help="Answers files; several print side by side."),
    questions: Path | None = typer.Option(
        None, help="Question file to join by question_id (.jsonl LRS-VQA, .json MME-RealWorld)."
    ),
    rule: ScoringRule = typer.Option(
        DEFAULT_SCORING_RULE,
        help="Open-ended rule of the per-category rows (OA/AA under both).",
    ),
    output_format: OutputFormat = typer.Option(OutputFormat.table, "--format", help=_FORMAT_HELP),
    out: Path | None = typer.Option(
        None, "-o", "--out", help="Also write the report: .json, .md or .csv by its suffix."
    ),
    json_alias: Path | None = typer.Option(None, "--json", hidden=True),
    markdown_alias: Path | None = typer.Option(None, "--markdown", hidden=True),
) -> None:
    """Score answers of lrsvqa, lmms-eval, VLMEvalKit or any tool writing question_id + text.

    JSON Lines (or a JSON list) with question_id and the prediction in answer / text /
    output; ground_truth and category in the records or from --questions. lmms-eval
    --log_samples files (doc_id, target, resps) and VLMEvalKit prediction tables
    (.xlsx, .tsv, .csv: index, answer, prediction) are told apart by content and suffix.
    Answers to questions not in --questions, and repeated ids (first answer scored),
    are reported. Several files print one table, a column per file (its pooled subsets).

    Example: lrsvqa score outputs/c2f.jsonl outputs/fastv.jsonl --format csv -o runs.csv
    """
    import json

    from rich.console import Console

    from lrsvqa.bench.datasets import load_benchmark
    from lrsvqa.bench.foreign import align_doc_ids, read_scorable
    from lrsvqa.bench.reports import (
        comparison_rows,
        print_report,
        print_rows,
        report_rows,
        rows_to_csv,
        rows_to_markdown,
        score_answers,
        write_report,
    )
    from lrsvqa.bench.run_record import read_run_record

    if out is not None and out.suffix.lower() not in (".json", ".md", ".csv"):
        raise typer.BadParameter("name a .json, .md or .csv file", param_hint="--out")
    items = None
    if questions is not None:
        bench = "mme-rs" if questions.suffix.lower() == ".json" else "lrs-vqa"
        items = load_benchmark(bench, questions)
    names = [path.stem for path in answers]
    if len(set(names)) < len(names):
        names = [str(path) for path in answers]
    reports = {}
    for name, path in zip(names, answers, strict=True):
        records = read_scorable(path)
        if items is not None:
            records = align_doc_ids(records, items, path)
        run = read_run_record(path)
        reports[name] = score_answers(records, items, rule=rule.value, run=run, source=path)
    single = next(iter(reports.values())) if len(reports) == 1 else None
    header, rows = report_rows(single) if single else comparison_rows(reports)
    as_json = single.to_dict() if single else {n: r.to_dict() for n, r in reports.items()}
    if output_format is OutputFormat.json:
        typer.echo(json.dumps(as_json, indent=2))
    elif output_format is OutputFormat.csv:
        typer.echo(rows_to_csv(header, rows), nl=False)
    elif single:
        print_report(single)
    else:
        print_rows(header, rows, title="Accuracy (%), one column per answers file")
        Console().print(f"categories scored with the {rule.value} rule")
    texts = {
        ".json": lambda: json.dumps(as_json, indent=2) + "\n",
        ".csv": lambda: rows_to_csv(header, rows),
        ".md": lambda: rows_to_markdown(header, rows),
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(texts[out.suffix.lower()](), encoding="utf-8")
    if single and (json_alias or markdown_alias):
        write_report(single, json_alias, markdown_alias)


@app.command()
def merge(
    output: Path = typer.Argument(..., help="Merged answers file."),
    shards: list[Path] | None = typer.Argument(
        None, help="Shard files in rank order (default: OUTPUT's .rankR-of-N files)."
    ),
) -> None:
    """Merge per-rank answer files of a sharded run into one answers file.

    Example: lrsvqa merge outputs/lrs-vqa-c2f.jsonl
    """
    from lrsvqa.bench.answers import find_shards, merge_answer_files

    files = shards or find_shards(output)
    count = merge_answer_files(files, output)
    typer.echo(f"{output}: {count} answers from {len(files)} shards")


@app.command("make-qa")
def make_qa(
    labels: Path = typer.Option(..., exists=True, help="Label file or folder of label files."),
    images: Path = typer.Option(
        ..., exists=True, file_okay=False, help="Image folder; record paths are relative to it."
    ),
    label_format: str | None = typer.Option(None, help="dota, fair1m, json or geojson."),
    format_alias: str | None = typer.Option(None, "--format", hidden=True),
    out: Path = typer.Option(..., "-o", "--out", help="LRS-VQA JSONL file to write."),
    llava: Path | None = typer.Option(None, help="Also write LLaVA SFT conversations (JSON)."),
    categories: str | None = typer.Option(
        None,
        help="Comma-separated subset of: count, object category, object color, "
        "object shape, rural or urban, object position (default: all).",
    ),
    max_per_image: int = typer.Option(16, min=1, help="Questions per image at most."),
    position_margin: float = typer.Option(
        0.5, help="Top/bottom/left/right-most: gap to runner-up in object extents."
    ),
    area_ratio: float = typer.Option(1.5, help="Largest/smallest: area ratio to runner-up."),
    subset: str = typer.Option("TPL", help="Question ids are SUBSET_n."),
    seed: int = typer.Option(0, help="Seed of references, wordings and subsets."),
) -> None:
    """Template questions (and LLaVA conversations) from detection labels.

    Example: lrsvqa make-qa --labels DOTA/labelTxt --images DOTA/images --label-format dota
    --out qa.jsonl --llava qa_llava.json
    """
    import json

    from lrsvqa.bench.templates import (
        TEMPLATE_CATEGORIES,
        UniquenessMargins,
        generate_from_labels,
        to_llava_conversations,
    )
    from lrsvqa.labels import LABEL_SUFFIXES, iter_label_files
    from lrsvqa.types import write_lrsvqa_jsonl

    label_format = _aliased(label_format, format_alias, "--format", "--label-format")
    if label_format not in LABEL_SUFFIXES:
        raise typer.BadParameter(
            f"choose from {', '.join(LABEL_SUFFIXES)}", param_hint="--label-format"
        )
    chosen = [c.strip() for c in categories.split(",")] if categories else TEMPLATE_CATEGORIES
    records = generate_from_labels(
        iter_label_files(labels, label_format),  # type: ignore[arg-type]
        images,
        label_format,  # type: ignore[arg-type]
        seed=seed,
        subset=subset,
        categories=chosen,
        max_per_image=max_per_image,
        margins=UniquenessMargins(position=position_margin, area_ratio=area_ratio),
    )
    typer.echo(f"{out}: {write_lrsvqa_jsonl(records, out)} questions")
    if llava is not None:
        conversations = to_llava_conversations(records)
        llava.write_text(json.dumps(conversations, indent=1, ensure_ascii=False), encoding="utf-8")
        typer.echo(f"{llava}: {len(conversations)} conversations")


def _float_list(text: str) -> list[float]:
    """Parse ``"0.25,1,4"``."""
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}") from error


@app.command("build-bench")
def build_bench(
    images: Path = typer.Option(..., exists=True, file_okay=False, help="Folder of large images."),
    labels: Path = typer.Option(..., exists=True, help="Label file or folder."),
    out: Path = typer.Option(
        ..., "-o", "--out", help="Output folder; rerunning resumes from its files."
    ),
    api_base: str | None = typer.Option(None, help="OpenAI-compatible API base URL."),
    model: str | None = typer.Option(None, help="Vision model name on that API."),
    api_key: str | None = typer.Option(
        None, envvar="OPENAI_API_KEY", show_default=False, help="API key (or OPENAI_API_KEY)."
    ),
    label_format: str | None = typer.Option(
        None, help="dota, fair1m, json or geojson (default: from file suffix)."
    ),
    format_alias: str | None = typer.Option(None, "--format", hidden=True),
    stages: str = typer.Option(
        "targets,crops,qa,quality,export", help="Comma-separated stages to run."
    ),
    resolutions: str = typer.Option("0.25,1,4", help="Quality-check budgets in megapixels."),
    max_concurrency: int = typer.Option(4, min=1, help="API requests in flight at once."),
    max_targets: int = typer.Option(8, min=1, help="Targets per image at most."),
    pairs: int = typer.Option(5, min=1, help="QA pairs asked for per target."),
    min_gain: float = typer.Option(0.0, help="Accuracy rise a category needs to be kept."),
    timeout: float = typer.Option(120.0, help="Seconds to wait for one API reply."),
    max_retries: int = typer.Option(5, min=0, help="Retries on 429, 5xx and timeouts."),
    subset: str = typer.Option("LRS", help="Exported question ids are SUBSET_n."),
    seed: int = typer.Option(0, help="Seed of every random choice."),
) -> None:
    """Build an LRS-VQA-style benchmark from detection labels (paper Sec. 4.2).

    Stages: targets (unique references), crops (red-box visual prompt), qa (vision LLM),
    quality (accuracy vs. resolution, quality.png), export (lrs_vqa.jsonl, summary.json).

    Example: lrsvqa build-bench --images imgs --labels labels --out bench
    --api-base http://localhost:8000/v1 --model Qwen2-VL-7B-Instruct
    """
    from rich.console import Console

    from lrsvqa.bench.construct.llm import ApiSettings
    from lrsvqa.bench.construct.pipeline import BuildConfig, build_benchmark, report_lines
    from lrsvqa.labels import LABEL_SUFFIXES

    label_format = _aliased(label_format, format_alias, "--format", "--label-format")
    if label_format is not None and label_format not in LABEL_SUFFIXES:
        raise typer.BadParameter(
            f"choose from {', '.join(LABEL_SUFFIXES)}", param_hint="--label-format"
        )
    chosen = [s.strip() for s in stages.split(",") if s.strip()]
    api = None
    if api_base and model:
        api = ApiSettings(
            base_url=api_base,
            model=model,
            api_key=api_key or "EMPTY",
            timeout=timeout,
            max_retries=max_retries,
        )
    elif {"qa", "quality"} & set(chosen):
        raise OptionError("--api-base", "the qa and quality stages need --api-base and --model")
    config = BuildConfig(
        images=images,
        labels=labels,
        out=out,
        label_format=label_format,  # type: ignore[arg-type]
        api=api,
        megapixels=tuple(_float_list(resolutions)),
        max_concurrency=max_concurrency,
        max_targets_per_image=max_targets,
        pairs_per_target=pairs,
        min_gain=min_gain,
        subset=subset,
        seed=seed,
    )
    try:
        reports = build_benchmark(config, chosen)
    except LrsvqaError:
        raise
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    console = Console()
    for line in report_lines(reports):
        console.print(line, markup=False, highlight=False)


@app.command()
def pyramid(
    image: str = typer.Argument(
        ..., help="Large image (TIFF/GeoTIFF, PNG, JPEG; with GDAL also JP2, VRT, ..., URLs)."
    ),
    overlay: Path | None = typer.Option(None, help="Write a PNG of each level's tile grid."),
    tile_size: int = typer.Option(
        PyramidConfig.tile_size,
        min=1,
        max=MAX_TILE_SIZE,
        help="Tile side B (336 for CLIP-L/14-336).",
    ),
    min_short_side: int = typer.Option(
        PyramidConfig.min_short_side, min=1, help="Bound of the coarsest level, px."
    ),
    dip_rule: DipRule = typer.Option(DEFAULT_DIP, help=_DIP_HELP),
    bands: str | None = typer.Option(None, help=_BANDS_HELP),
    pixel_limit: bool = typer.Option(
        True, "--pixel-limit/--no-pixel-limit", help="The decompression-bomb guard."
    ),
) -> None:
    """Print an image's Dynamic Image Pyramid: level sizes, tile grids, scales.

    Example: lrsvqa pyramid scene.tif --overlay grid.png
    """
    from rich.console import Console

    from lrsvqa.imagery.display import georef_lines, pyramid_table, save_grid_overlay
    from lrsvqa.imagery.reader import DEFAULT_MAX_PIXELS
    from lrsvqa.imagery.tiles import PyramidReader

    console = Console()
    reader = PyramidReader.open(
        image,
        tile_size=tile_size,
        min_short_side=min_short_side,
        dip_rule=dip_rule.value,
        bands=_int_list(bands),
        max_pixels=DEFAULT_MAX_PIXELS if pixel_limit else None,
    )
    with reader:
        console.print(pyramid_table(reader))
        for line in georef_lines(reader.image):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        if overlay is not None:
            console.print(f"tile-grid overlay written to {save_grid_overlay(reader, overlay)}")


@app.command()
def demo(
    out: Path = typer.Option(
        Path("outputs/demo"), "-o", "--out", help="Folder for the scene and figures."
    ),
    out_dir_alias: Path | None = typer.Option(None, "--out-dir", hidden=True),
    side: int | None = typer.Option(
        None, min=2048, max=32768, help="Scene side in pixels [default: 6144]."
    ),
    seed: int = typer.Option(0, help="Scene seed (held out from training)."),
    questions: int = typer.Option(5, min=1, help="Questions to ask, each of another category."),
    pyramid_only: bool = typer.Option(False, help="Only show the pyramid of a large image."),
) -> None:
    """Run the end-to-end demo on a synthetic scene (no download needed).

    Uses the embedded default shipped with the package (a tiny LLaVA-NeXT trained on
    the synthetic world and its distilled RFM); where the shipped weights do not match
    the code's recipe it rebuilds them first (`lrsvqa build-default`).

    Example: lrsvqa demo --side 16384 --questions 5
    """
    out_dir = out_dir_alias or out
    if pyramid_only:
        from lrsvqa.app.imagery_demo import run_pyramid_demo

        run_pyramid_demo(out_dir)
        return
    from lrsvqa.app.demo import DEMO_SIDE, run_demo

    run_demo(out_dir, side=side or DEMO_SIDE, seed=seed, questions=questions)


@app.command("build-default")
def build_default(
    out: Path | None = typer.Option(
        None, "-o", "--out", help="Write the shipped layout (model, RFM, manifest) here."
    ),
    smoke: bool = typer.Option(False, help="A shortened recipe of the same code path (CI)."),
    architecture: str | None = typer.Option(
        None, help="Model the recipe trains: llava-next (the recipe's) or qwen2-vl."
    ),
    sft_steps: int | None = typer.Option(
        None, min=1, help="SFT steps instead of the recipe's (a shorter build; another hash)."
    ),
    seed: int | None = typer.Option(
        None, help="Training seed instead of the recipe's 0 (same scenes; another hash)."
    ),
    recipe_set: list[str] = typer.Option(
        [],
        "--set",
        help="Change recipe fields, FIELD=VALUE (repeat or comma-separate; another hash).",
    ),
) -> None:
    """Retrain the embedded default from scratch with the code's recipe.

    The full recipe takes 25-70 minutes on 2 cores, by machine; an interrupted build resumes at
    the stage it lost. The build cache is OUT/build (or $LRSVQA_HOME without --out);
    OUT then holds what `lrsvqa demo` loads when it is copied to
    src/lrsvqa/app/shipped_default. `--architecture qwen2-vl` trains a tiny Qwen2-VL
    with the same recipe (retained tokens keep their 2-D positions; docs/qwen.md).
    `--seed N` changes the training seed (initialisation, object placements, question
    draws and batch order) but not the training scenes, to measure seed variance.
    `--set FIELD=VALUE` changes any other scalar or int-tuple field of the recipe
    (`DefaultModelConfig`), e.g. `--set hidden_size=256`.

    Example: lrsvqa build-default --out outputs/default
    """
    from dataclasses import replace

    from lrsvqa.app.default_model import DefaultModelConfig, build_default_model, recipe_with
    from lrsvqa.app.shipped import SMOKE_RECIPE, export_default

    changes = {"architecture": architecture, "sft_steps": sft_steps, "seed": seed}
    try:
        config = replace(
            SMOKE_RECIPE if smoke else DefaultModelConfig(),
            **{key: value for key, value in changes.items() if value is not None},
        )
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--architecture") from error
    try:
        config = recipe_with(config, _key_values(recipe_set, "--set"))
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--set") from error
    trained = build_default_model(out / "build" if out else None, config, log=typer.echo)
    typer.echo(f"model: {trained.model_dir}\nRFM: {trained.rfm_dir}")
    if out is not None:
        typer.echo(f"manifest: {export_default(trained, config, out)}")


@app.command()
def synth(
    out: Path = typer.Option(..., "-o", "--out", help="World folder; scenes go to OUT/SPLIT/."),
    scenes: int = typer.Option(..., "--scenes", min=1, help="Number of scenes."),
    min_side: int = typer.Option(8192, help="Smallest side in pixels (>= 2048)."),
    max_side: int = typer.Option(32768, help="Largest side in pixels."),
    seed: int = typer.Option(0, help="World seed."),
    split: str = typer.Option("test", help="Split name; splits with one seed differ."),
) -> None:
    """Generate synthetic scenes (pyramidal TIFF + JSON labels + manifest); reruns reuse them.

    Example: lrsvqa synth --out data/synth --scenes 24 --min-side 8192 --max-side 32768 --seed 0
    """
    from lrsvqa.synthetic import generate_world
    from lrsvqa.synthetic.scene import MIN_SIDE

    if not MIN_SIDE <= min_side <= max_side:
        raise typer.BadParameter(f"need {MIN_SIDE} <= --min-side <= --max-side")
    manifest = generate_world(
        out,
        num_scenes=scenes,
        min_side=min_side,
        max_side=max_side,
        seed=seed,
        split=split,
        log=typer.echo,
    )
    typer.echo(f"{len(manifest['scenes'])} scenes in {out / split / 'manifest.json'}")


@app.command()
def distill(
    model: str = typer.Option(..., "--model", help="LLaVA checkpoint folder or hub id (frozen)."),
    data: Path = typer.Option(..., exists=True, dir_okay=False, help="LLaVA-format JSON."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder: RFM, log, checkpoints."),
    image_root: Path | None = typer.Option(None, help="Image folder (default: next to --data)."),
    rfm_layers: str | None = typer.Option(None, help="LLM layers the RFM starts from: 1,5,11,14."),
    pairs: str | None = typer.Option(
        None,
        help="Distilled RFM:LLM layer pairs, e.g. 0:0,4:14 (RFM layer 0 is the leading copy "
        "of LLM layer 0; default: first and last).",
    ),
    steps: int = typer.Option(1000, min=1, help="Optimizer steps of the whole schedule."),
    stop_after: int | None = typer.Option(
        None, min=1, help="Stop this run at this step (checkpointed); --resume continues."
    ),
    lr: float = typer.Option(1e-4, help="Peak learning rate (warm-up, cosine decay)."),
    batch_size: int = typer.Option(1, min=1, help="Conversations per process per micro-batch."),
    grad_accum: int = typer.Option(1, min=1, help="Micro-batches per optimizer step."),
    lambda_hr: float = typer.Option(2.0, help="Weight of the high-resolution KL."),
    lambda_mse: float = typer.Option(1.0, help="Weight of the high-resolution MSE."),
    lambda_kl: float = typer.Option(1.0, help="Weight of the KL terms."),
    bf16: bool = typer.Option(False, "--bf16", help="bfloat16 autocast."),
    cpu: bool = typer.Option(False, "--cpu", help="Force CPU (multi-process CPU runs: gloo)."),
    dtype: str = typer.Option(DEFAULT_DTYPE, help=f"Frozen model: {_DTYPE_HELP}"),
    attn_implementation: str | None = typer.Option(None, help=_ATTN_HELP),
    min_short_side: int = typer.Option(
        PyramidConfig.min_short_side, min=1, help="DIP: bound of the coarsest level, px."
    ),
    dip_rule: DipRule = typer.Option(DEFAULT_DIP, help=_DIP_HELP),
    hr_pool: int | None = typer.Option(None, min=1, help=_HR_POOL_HELP),
    hr_pool_mode: str | None = typer.Option(None, help=_POOL_MODE_HELP),
    newline: bool = typer.Option(True, "--newline/--no-newline", help=_NEWLINE_HELP),
    save_every: int = typer.Option(500, min=0, help="Steps between checkpoints (0: none)."),
    log_every: int = typer.Option(10, min=1, help="Steps per log.jsonl line."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint."),
    resume_from: Path | None = typer.Option(None, help="Continue from this checkpoint folder."),
    eval_size: int = typer.Option(0, min=0, help="Conversations to measure agreement on."),
    eval_data: Path | None = typer.Option(None, help="Held-out JSON for that measurement."),
    num_workers: int = typer.Option(0, min=0, help="DataLoader workers reading tiles."),
    seed: int = typer.Option(0, help="Seed of data order and randomness."),
) -> None:
    """Distil the Region Focus Module from the frozen LLM's attention (paper Sec. 4.1.2).

    Multi-GPU / multi-node: accelerate launch [--multi_gpu | --config_file ...] "$(which lrsvqa)"
    distill ...; on CPU: torchrun --nproc-per-node 2 "$(which lrsvqa)" distill --cpu ...
    The device is accelerate's (CUDA, then MPS, then the CPU; --cpu forces the CPU).

    Example: lrsvqa distill --model ./llava --data sft.json --image-root imgs --out rfm
    --rfm-layers 1,5,11,14 --pairs 0:0,4:14 --steps 2000 --grad-accum 8 --bf16
    """
    import json

    from lrsvqa.train.distill import DistillConfig
    from lrsvqa.train.distill import distill as run_distill
    from lrsvqa.train.losses import LossWeights
    from lrsvqa.train.teacher import parse_pairs

    try:
        chosen_pairs = parse_pairs(pairs) if pairs else None
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--pairs") from error
    config = DistillConfig(
        model=model,
        data=data,
        out_dir=out,
        image_root=image_root,
        rfm_layers=_int_list(rfm_layers),
        pairs=chosen_pairs,
        steps=steps,
        stop_after=stop_after,
        batch_size=batch_size,
        grad_accum=grad_accum,
        lr=lr,
        weights=LossWeights(hr=lambda_hr, mse=lambda_mse, kl=lambda_kl),
        mixed_precision="bf16" if bf16 else "no",
        cpu=cpu,
        model_dtype=dtype,
        attn_implementation=attn_implementation,
        min_short_side=min_short_side,
        dip_rule=dip_rule.value,
        hr_pool=hr_pool,
        pool_mode=_pool_mode(hr_pool_mode),
        newline=None if newline else False,
        seed=seed,
        num_workers=num_workers,
        log_every=log_every,
        save_every=save_every,
        resume=resume_from or resume,
        eval_data=eval_data,
        eval_size=eval_size,
    )
    report = run_distill(config)
    if report.is_main_process:
        typer.echo(json.dumps(report.to_dict(), indent=2))


@app.command()
def sft(
    model: str = typer.Option(..., help="LLaVA checkpoint folder (or hub id) to fine-tune."),
    data: Path = typer.Option(..., exists=True, dir_okay=False, help="LLaVA-format JSON."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder: model, log, checkpoints."),
    image_root: Path | None = typer.Option(None, help="Image folder (default: next to --data)."),
    steps: int | None = typer.Option(None, min=1, help="Optimizer steps [SFTConfig: 1000]."),
    stop_after: int | None = typer.Option(
        None, min=1, help="Stop this run at this step (checkpointed); --resume continues."
    ),
    batch_size: int | None = typer.Option(None, min=1, help="Examples per step [16]."),
    lr: float | None = typer.Option(None, help="Peak learning rate [1e-3]."),
    warmup_steps: int | None = typer.Option(None, min=0, help="Warm-up steps [50]."),
    max_grad_norm: float | None = typer.Option(None, min=0, help="Clip norm, 0: off [1.0]."),
    save_every: int = typer.Option(200, min=0, help="Steps between checkpoints (0: none)."),
    log_every: int | None = typer.Option(None, min=1, help="Steps per log line [25]."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint."),
    dtype: str = typer.Option(DEFAULT_DTYPE, help=_DTYPE_HELP),
    device: str = typer.Option(DEFAULT_DEVICE, help=_DEVICE_HELP),
    attn_implementation: str | None = typer.Option(None, help=_ATTN_HELP),
    min_short_side: int = typer.Option(1008, min=1, help="DIP: bound of the coarsest level, px."),
    dip_rule: DipRule = typer.Option(DEFAULT_DIP, help=_DIP_HELP),
    hr_pool: int | None = typer.Option(None, min=1, help=_HR_POOL_HELP),
    hr_pool_mode: str | None = typer.Option(None, help=_POOL_MODE_HELP),
    newline: bool = typer.Option(True, "--newline/--no-newline", help=_NEWLINE_HELP),
    seed: int = typer.Option(0, help="Seed of data order and randomness."),
) -> None:
    """Fine-tune a LLaVA model on LLaVA-format conversations (the loop distill uses).

    Each turn trains on the image's thumbnail and coarsest-level tiles with its answer
    as the target; OUT/model is the result (use it as --model). Unset options take
    SFTConfig's defaults.

    Example: lrsvqa sft --model ./llava --data sft.json --out ft --steps 2000 --lr 2e-5
    """
    import json

    from lrsvqa.train.sft import SFTConfig, finetune_conversations

    chosen = {
        "steps": steps,
        "batch_size": batch_size,
        "learning_rate": lr,
        "warmup_steps": warmup_steps,
        "max_grad_norm": max_grad_norm,
        "log_every": log_every,
    }
    config = SFTConfig(save_every=save_every, **{k: v for k, v in chosen.items() if v is not None})
    report = finetune_conversations(
        model,
        data,
        out,
        config,
        image_root=image_root,
        min_short_side=min_short_side,
        dip_rule=dip_rule.value,
        hr_pool=hr_pool,
        pool_mode=_pool_mode(hr_pool_mode),
        newline=None if newline else False,
        seed=seed,
        stop_after=stop_after,
        resume=resume,
        dtype=dtype,
        device=device,
        attn_implementation=attn_implementation,
    )
    typer.echo(json.dumps(report, indent=2))


@app.command()
def flops(
    config: Path = typer.Option(..., exists=True, help="LLaVA config.json (or its folder)."),
    image_size: str = typer.Option("4000x4000", help="WIDTHxHEIGHT in pixels."),
    strategies: str = typer.Option(
        "anyres-p144,visionzip,fastv,pdrop,prumerge++,c2f", help="Comma-separated names."
    ),
    c2f_tiles: str | None = typer.Option(
        None, help="c2f: average tiles at each level below the first, e.g. 36,50 (0 = stop)."
    ),
    trace: Path | None = typer.Option(
        None, exists=True, dir_okay=False, help="c2f: eval answers JSONL to average tiles from."
    ),
    option: list[str] = typer.Option(
        [],
        "--option",
        help="Strategy option key=value, for every listed strategy that has it "
        "(see lrsvqa strategies), repeatable.",
    ),
    alpha: float | None = typer.Option(None, help="Same as --option alpha=..."),
    max_tiles: int | None = typer.Option(None, help="Same as --option max_tiles=..."),
    grid_tiles: int | None = typer.Option(None, help="Same as --option grid_tiles=..."),
    min_short_side: int | None = typer.Option(None, help="Same as --option min_short_side=..."),
    dip_rule: DipRule | None = typer.Option(None, help="Same as --option dip_rule=..."),
    rfm_depth: int | None = typer.Option(
        None, help="RFM layers counted per pyramid level (default: ModelDims's)."
    ),
    hr_pool: int | None = typer.Option(
        None, min=1, help="Pooling stride of high-res tiles (2 = the paper's; default: config)."
    ),
    newline: bool = typer.Option(
        True, "--newline/--no-newline", help="Count row-end tokens (--no-newline: none)."
    ),
    output_format: OutputFormat = typer.Option(OutputFormat.table, "--format", help=_FORMAT_HELP),
) -> None:
    """Theoretical LLM TFLOPs of the vision tokens per strategy (FastV/PDrop formula).

    Each strategy is counted with the options lrsvqa eval would run it with: its
    defaults (lrsvqa strategies lists them), overridden by --option and the shortcuts.

    Example (the paper's Tab. 4 setting): lrsvqa flops --config qwen2/config.json
    --hr-pool 2 --no-newline --c2f-tiles 36,50 --strategies anyres-p144,c2f-nodip,c2f
    """
    import dataclasses
    import json

    from rich.console import Console
    from rich.table import Table

    from lrsvqa.flops import load_model_dims
    from lrsvqa.strategies.counters import c2f_tiles_from_trace
    from lrsvqa.strategies.registry import flops_table, strategy_entry

    names = [name.strip() for name in strategies.split(",") if name.strip()]
    shortcuts = {"alpha": alpha, "max_tiles": max_tiles, "grid_tiles": grid_tiles}
    shortcuts |= {"min_short_side": min_short_side, "dip_rule": dip_rule and dip_rule.value}
    given = {key: value for key, value in shortcuts.items() if value is not None}
    given |= _key_values(option, "--option")
    try:
        entries = [strategy_entry(name) for name in names]
    except KeyError as error:
        raise typer.BadParameter(error.args[0], param_hint="--strategies") from error
    per_strategy = {
        e.name: {k: v for k, v in given.items() if k in e.option_names} for e in entries
    }
    unused = sorted(set(given) - {key for own in per_strategy.values() for key in own})
    if unused:
        raise typer.BadParameter(f"no listed strategy takes option(s) {', '.join(unused)}")
    try:
        height, width = parse_image_size(image_size)
        dims = load_model_dims(config, **({} if rfm_depth is None else {"rfm_layers": rfm_depth}))
        dims = dataclasses.replace(
            dims,
            hr_pool=dims.hr_pool if hr_pool is None else hr_pool,
            image_newline=dims.image_newline and newline,
        )
        per_level = _float_tuple(c2f_tiles) if c2f_tiles else None
        if trace is not None and per_level is None:
            per_level = c2f_tiles_from_trace(trace.read_text().splitlines())
        rows = flops_table(dims, height, width, names, per_strategy, per_level)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    if output_format is OutputFormat.json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if output_format is OutputFormat.csv:
        from lrsvqa.bench.reports import rows_to_csv

        columns = ["strategy", "vision_tokens_encoded", "vision_tokens_to_llm", "tflops"]
        table_rows = [[str(row[c]) for c in columns] for row in rows]
        typer.echo(rows_to_csv(columns, table_rows), nl=False)
        return
    table = Table(title=f"theoretical FLOPs, {width}x{height} px")
    for column in ("strategy", "vision tokens encoded", "vision tokens to LLM", "TFLOPs"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for row in rows:
        table.add_row(
            row["strategy"],
            f"{row['vision_tokens_encoded']:,}",
            f"{row['vision_tokens_to_llm']:,}",
            f"{row['tflops']:.2f}",
        )
    levels = ",".join(f"{t:g}" for t in per_level) if per_level is not None else None
    table.caption = (
        f"LLM d={dims.hidden_size} m={dims.intermediate_size} layers={dims.num_layers}, "
        f"{dims.tokens_per_tile} tokens/tile, hr_pool {dims.hr_pool}, "
        f"newlines {'on' if dims.image_newline else 'off'}"
        + (f", c2f {levels} tiles/level" if levels is not None else "")
    )
    Console().print(table)


@app.command("strategies")
def strategies_command(
    output_format: OutputFormat = typer.Option(OutputFormat.table, "--format", help=_FORMAT_HELP),
) -> None:
    """List the strategies with their options (type, default, help).

    Give options to lrsvqa eval as --strategy-option key=value and to lrsvqa flops as
    --option key=value; the model options apply to every strategy.

    Example: lrsvqa strategies --format json
    """
    import json

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from lrsvqa.strategies.registry import describe_strategies

    rows = describe_strategies()
    if output_format is OutputFormat.json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if output_format is OutputFormat.csv:
        from lrsvqa.bench.reports import rows_to_csv

        cells = [
            [row["name"], opt["name"], opt["type"], _shown(opt["default"]), opt["help"]]
            for row in rows
            for opt in row["options"] or [{"name": "", "type": "", "default": "", "help": ""}]
        ]
        typer.echo(rows_to_csv(["strategy", "option", "type", "default", "help"], cells), nl=False)
        return
    table = Table(title="strategies (lrsvqa eval --strategy NAME --strategy-option key=value)")
    for column in ("strategy", "option", "type", "default", "help"):
        table.add_column(column)
    for row in rows:
        table.add_row(escape(row["name"]), "", "", "", escape(row["summary"]))
        for opt in row["options"]:
            cells = (opt["name"], opt["type"], _shown(opt["default"]), opt["help"])
            table.add_row("", *(escape(cell) for cell in cells))
        table.add_section()
    Console().print(table)


def _shown(value: object) -> str:
    """An option default as one would type it after ``key=``."""
    if value is None:
        return "none"
    if isinstance(value, tuple | list):
        return ",".join(map(str, value))
    return str(value)


def parse_image_size(text: str) -> tuple[int, int]:
    """``"WIDTHxHEIGHT"`` (e.g. ``"27328x600"``) to ``(height, width)``."""
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"expected WIDTHxHEIGHT in pixels, got {text!r}")
    return int(parts[1]), int(parts[0])


def _float_tuple(text: str) -> tuple[float, ...]:
    """Parse ``"36,50"``."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from error
