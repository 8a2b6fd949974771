"""Two models' answers to the same synthetic benchmark, side by side, as markdown tables.

``synthetic_world.py`` scores the rows of one model; comparing two models (the LLaVA
default and the tiny Qwen2-VL, docs/results/qwen_vs_llava.md) needs their answer files
scored on the same questions (those every row answered, so a row stopped early is
compared on its part): accuracy by category and by reference kind, each cell with its
number of questions, and, for pairs of rows, how many questions one got right and the
other wrong (the discordant pairs, the part of a difference that is not noise shared by
both).

    python benchmarks/side_by_side.py --questions WORLD/bench/questions.jsonl
        --answers "LLaVA c2f=DIR/c2f__distilled_RFM-....jsonl" --answers "Qwen c2f=..."
        [--pair "Qwen c2f:LLaVA c2f"] [--markdown OUT.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lrsvqa.bench.datasets import BenchItem, load_lrs_vqa
from lrsvqa.bench.scoring import score_record
from lrsvqa.bench.templates import question_kind

KIND_ORDER = ("category-unique", "scene-positional", "setting-qualified", "count")


def verdicts(answers: Path, items: dict[str, BenchItem]) -> dict[str, tuple[bool, bool | None]]:
    """``question_id -> (correct, localised)`` of every answered benchmark question.

    ``localised`` is None where the question has no box, or where the row selects no
    boxes at all (the thumbnail), as in the harness's reports.
    """
    scored = []
    for line in answers.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            item = items.get(str(record["question_id"]))
            if item is not None:
                scored.append(score_record(record, item))
    boxes = any(s.selected_boxes for s in scored)
    return {s.question_id: (s.correct, s.localised if boxes else None) for s in scored}


def _cell(values: list[bool]) -> str:
    return f"{100 * sum(values) / len(values):.1f} ({sum(values)}/{len(values)})" if values else "-"


def tables(questions: Path, answers: dict[str, Path], pairs: list[tuple[str, str]]) -> str:
    """The markdown: accuracy by category, by reference kind (with recall), discordant pairs."""
    records = [json.loads(x) for x in questions.read_text().splitlines() if x.strip()]
    items = {item.question_id: item for item in load_lrs_vqa(questions)}
    kind = {str(r["question_id"]): question_kind(r) for r in records}
    scored = {label: verdicts(path, items) for label, path in answers.items()}
    # Rows stopped early (a time limit) are compared on the questions every row answered.
    common = set.intersection(*(set(v) for v in scored.values()))
    scored = {label: {q: v for q, v in s.items() if q in common} for label, s in scored.items()}
    categories = sorted({item.category for item in items.values()})
    kinds = [k for k in KIND_ORDER if k in kind.values()]
    kinds += sorted(set(kind.values()) - set(kinds))

    def row(label: str, key, groups: list[str], localised: bool = False) -> str:
        cells = []
        for group in groups:
            ids = [q for q in scored[label] if key(q) == group]
            cells.append(_cell([scored[label][q][0] for q in ids]))
            if localised:
                found = [scored[label][q][1] for q in ids if scored[label][q][1] is not None]
                cells.append(f"{100 * sum(found) / len(found):.1f}" if found else "-")
        every = list(scored[label].values())
        return f"| {label} | " + " | ".join([*cells, _cell([c for c, _ in every])]) + " |"

    out = [f"{len(common)} of {len(items)} questions, those every row answered.", ""]
    out += ["Accuracy (normalised rule) by question category, % (right/asked):", ""]
    out += ["| row | " + " | ".join([*categories, "OA"]) + " |"]
    out += ["|---" * (len(categories) + 2) + "|"]
    out += [row(label, lambda q: items[q].category, categories) for label in answers]
    out += ["", "Accuracy by reference kind, % (right/asked), and localisation recall, %:", ""]
    out += ["| row | " + " | ".join(f"{k} | {k} loc." for k in kinds) + " | OA |"]
    out += ["|---" * (2 * len(kinds) + 2) + "|"]
    out += [row(label, kind.get, kinds, localised=True) for label in answers]
    if pairs:
        out += [
            "",
            "Discordant pairs by reference kind (A right and B wrong / B right and A wrong):",
        ]
        out += ["", "| A vs B | " + " | ".join([*kinds, "all"]) + " |"]
        out += ["|---" * (len(kinds) + 2) + "|"]
        for a, b in pairs:
            cells = []
            for group in [*kinds, None]:
                ids = [q for q in scored[a] if q in scored[b] and group in (None, kind.get(q))]
                wins = sum(scored[a][q][0] and not scored[b][q][0] for q in ids)
                losses = sum(scored[b][q][0] and not scored[a][q][0] for q in ids)
                cells.append(f"{wins} / {losses}")
            out.append(f"| {a} vs {b} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=Path, required=True)
    parser.add_argument("--answers", action="append", required=True, help="LABEL=ANSWERS.jsonl")
    parser.add_argument("--pair", action="append", default=[], help="LABEL_A:LABEL_B")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the tables here")
    args = parser.parse_args()
    answers = dict(spec.split("=", 1) for spec in args.answers)
    pairs = [tuple(spec.split(":", 1)) for spec in args.pair]
    unknown = {label for pair in pairs for label in pair} - set(answers)
    if unknown:
        parser.error(f"--pair names rows without --answers: {sorted(unknown)}")
    text = tables(args.questions, {k: Path(v) for k, v in answers.items()}, pairs)
    print(text)
    if args.markdown is not None:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
