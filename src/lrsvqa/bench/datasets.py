"""Benchmark question files: LRS-VQA (and the synthetic benchmark) and MME-RealWorld-RS.

Both load into :class:`BenchItem`, the one record type the runner and the scorer
use, so a new benchmark only needs a loader.

LRS-VQA (official ``LRS_VQA_merged.jsonl``): one JSON object per line with
``question_id``, ``image`` (path relative to the data root, e.g.
``LRS_VQA/image/15565.tif``), ``category``, ``text`` (the prompt, answer-format
instruction included), ``ground_truth`` and optionally ``hbox`` (``[x0, y0, x1, y1]``
of the object the question is about), ``rbox``, ``image_size``. The subset is the
``question_id`` prefix before the last ``_``: ``FAIR``, ``GLH-Bridge``, ``STAR``
(2,272 / 1,062 / 3,999 items in the official file). The synthetic benchmark writes
the same format with its own prefix.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from lrsvqa.errors import InputFileError, UnsafePathError
from lrsvqa.types import Box, read_lrsvqa_jsonl

MME_RS_SUBSET = "MME-RealWorld-RS"

#: Prompt templates for multiple-choice items, each as its script writes it, spaces and
#: newlines included. ``official`` is MME-RealWorld's evaluation prompt
#: (``evaluation/model_vqa_mme_real_world.py``); ``paper`` is the LRS-VQA authors'
#: (``LRS-VQA-Code/llava/eval/model_vqa_mme_realworld.py``), which drops the last line
#: ("The best answer is:"), as the paper does because Vicuna-1.5 models otherwise tend to
#: answer "A" every time, and puts a blank line before the options.
#: Any template with ``{question}``, ``{options}`` (one ``(X) text`` line per option)
#: and optionally ``{letters}`` (``"A, B, C, D, or E"``) can be used instead.
_MME_INSTRUCTION = (
    "Select the best answer to the above multiple-choice question based on the image. "
    "Respond with only the letter ({letters}) of the correct option."
)
MME_PROMPTS: dict[str, str] = {
    "official": (
        "{question} The choices are listed below: \n{options}\n"
        + _MME_INSTRUCTION
        + "\nThe best answer is:"
    ),
    "paper": "{question} The choices are listed below: \n\n{options}\n" + _MME_INSTRUCTION,
}


@dataclass(frozen=True)
class BenchItem:
    """One benchmark question.

    Attributes:
        question_id: Unique id; answer files are keyed by it.
        image: Image path relative to the data root, as written in the question file.
        question: The exact prompt given to the strategy.
        ground_truth: Reference answer (an option letter for multiple choice).
        category: Question type, the unit of per-category accuracy.
        subset: Benchmark part (``FAIR``, ``GLH-Bridge``, ``STAR``, ...).
        choices: Option texts in letter order (A, B, ...); empty for open-ended items.
        hbox: Box ``(x0, y0, x1, y1)`` of the object asked about, when known, for
            localisation recall.
    """

    question_id: str
    image: str
    question: str
    ground_truth: str
    category: str
    subset: str
    choices: tuple[str, ...] = ()
    hbox: Box | None = None

    @property
    def is_multiple_choice(self) -> bool:
        """Whether the item is scored by option letter rather than open-ended text."""
        return bool(self.choices)

    def to_record(self) -> dict[str, Any]:
        """The item as JSON fields: the head of an answer record and of an lmms-eval doc.

        Both are written from this one place so they cannot drift apart in keys or
        types; ``choices`` appears only for multiple-choice items, ``hbox`` is null
        when the box is unknown.
        """
        record: dict[str, Any] = {
            "question_id": self.question_id,
            "subset": self.subset,
            "category": self.category,
            "image": self.image,
            "question": self.question,
            "ground_truth": self.ground_truth,
        }
        if self.choices:
            record["choices"] = list(self.choices)
        record["hbox"] = list(self.hbox) if self.hbox else None
        return record


#: Benchmarks ``lrsvqa eval --bench`` knows, with their question file's default
#: name inside the data root.
BENCHMARKS: dict[str, str] = {
    "lrs-vqa": "LRS_VQA_merged.jsonl",
    "mme-rs": "MME_RealWorld_RS.json",
}


def load_benchmark(
    bench: str,
    questions: Path,
    *,
    subsets: Collection[str] | None = None,
    prompt: str = "official",
) -> list[BenchItem]:
    """Load a benchmark's items, optionally keeping only some subsets.

    Args:
        bench: A key of :data:`BENCHMARKS`; the synthetic benchmark is ``lrs-vqa``.
        questions: Its question file.
        subsets: Subset names to keep (e.g. ``{"FAIR"}``); all when ``None``.
        prompt: Multiple-choice prompt preset or template (``mme-rs`` only).

    Raises:
        ValueError: Unknown benchmark.
        QuestionFileError: Missing or unreadable file, a bad item, or no questions
            (in the file, or in the chosen subsets).
    """
    if bench not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {bench!r}; known: {', '.join(BENCHMARKS)}")
    questions = Path(questions)
    if not questions.is_file():
        problem = "no such file" if not questions.exists() else "not a file"
        raise QuestionFileError(questions, problem)
    if bench == "lrs-vqa":
        items = load_lrs_vqa(questions)
    else:
        items = load_mme_realworld(questions, prompt)
    if not items:
        raise QuestionFileError(questions, "no questions in the file")
    if subsets is not None:
        found = sorted({item.subset for item in items})
        items = [item for item in items if item.subset in subsets]
        if not items:
            raise QuestionFileError(
                questions,
                f"no questions of subsets {', '.join(sorted(subsets))} (it has {', '.join(found)})",
            )
    return items


class QuestionFileError(InputFileError):
    """A question file is missing, unreadable, empty, or holds a bad item."""


class UnsafeImagePathError(UnsafePathError):
    """An image path in a question file points outside the data root."""


def resolve_image(root: Path, relative: str) -> Path:
    """Join an image path from a question file to the user's data root.

    The check is lexical (absolute paths, drive letters and ``..`` components are
    refused) rather than on resolved paths, so a data root that is itself a symlink
    to another disk, a common layout for multi-GB image sets, keeps working.

    Raises:
        UnsafeImagePathError: ``relative`` is absolute or climbs out of ``root``.
    """
    posix = PurePosixPath(relative)
    windows = PureWindowsPath(relative)
    if not relative or posix.is_absolute() or windows.is_absolute() or windows.drive:
        raise UnsafeImagePathError(relative, "image path is not relative to the data root")
    if ".." in posix.parts or ".." in windows.parts:
        raise UnsafeImagePathError(relative, "image path escapes the data root")
    return Path(root) / posix


def subset_of(question_id: str) -> str:
    """Subset name of an LRS-VQA-format id: the part before the last ``_``."""
    prefix, sep, _ = question_id.rpartition("_")
    return prefix if sep else question_id


def load_lrs_vqa(path: Path) -> list[BenchItem]:
    """Read an LRS-VQA-format question file (official or synthetic).

    The rule (required and optional fields) is :mod:`lrsvqa.types`'s, shared with the
    question generators.

    Raises:
        QuestionFileError: ``file:line`` for a line that is not UTF-8 or JSON, breaks
            the rule (a required field missing, null or empty), or repeats a
            ``question_id`` (answer files are keyed by id, so ids must be unique).
    """
    try:
        rows = read_lrsvqa_jsonl(path)
    except InputFileError as error:
        raise QuestionFileError(error.path, error.problem) from None
    return [_lrs_item(row) for row in rows]


def _lrs_item(row: Mapping[str, Any]) -> BenchItem:
    """Build one LRS-VQA item from its checked JSON object."""
    question_id = str(row["question_id"])
    return BenchItem(
        question_id=question_id,
        image=str(row["image"]),
        question=str(row["text"]),
        ground_truth=str(row["ground_truth"]),
        category=str(row["category"]),
        subset=subset_of(question_id),
        hbox=as_box(row.get("hbox")),
    )


def as_box(value: Any) -> Box | None:
    """A 4-number box, or ``None`` when absent (or empty)."""
    if not value:
        return None
    x0, y0, x1, y1 = (float(v) for v in value)
    return (x0, y0, x1, y1)


# --- MME-RealWorld-RS -------------------------------------------------------------

# Accepted spellings of MME-RealWorld fields, compared after lower-casing and
# removing spaces, underscores and hyphens ("Answer choices" == "answer_choices").
_MME_KEYS: dict[str, tuple[str, ...]] = {
    "question_id": ("questionid", "id"),
    "image": ("image", "imagepath"),
    "question": ("text", "question"),
    "choices": ("answerchoices", "choices", "options"),
    "answer": ("groundtruth", "answer", "gt"),
    "category": ("category",),
    "subtask": ("subtask",),
}

_LETTERED = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])[.:)])\s*")


def load_mme_realworld(path: Path, prompt: str = "official") -> list[BenchItem]:
    """Read MME-RealWorld(-RS) multiple-choice items from the official JSON list.

    Accepted item fields (key case, spaces, ``_`` and ``-`` are ignored):

    * id: ``Question_id`` or ``id``; the item's position in the list when absent,
    * image: ``Image`` or ``image_path``,
    * question: ``Text`` or ``question``,
    * options: ``Answer choices`` / ``choices`` / ``options`` as a list
      (``"(A) red"``, ``"A. red"`` or bare ``"red"``, in letter order) or a
      ``{"A": "red", ...}`` mapping; or, failing those, single-letter keys
      ``A``, ``B``, ... on the item itself,
    * answer: ``Ground truth`` / ``answer`` / ``gt`` as a letter (``"B"``,
      ``"(B)"``) or as the text of the right option,
    * category: ``Category`` (lower-cased: ``color``, ``count``, ``position``),
      falling back to ``Subtask``; the subset is ``Subtask`` (``Remote Sensing``)
      or ``MME-RealWorld-RS``.

    Args:
        path: The JSON file (``MME_RealWorld_RS.json``).
        prompt: A key of :data:`MME_PROMPTS` or a template string.

    Raises:
        ValueError: Unknown prompt.
        QuestionFileError: ``file: item N: ...`` for a file that is not a JSON list, an
            unreadable item, or a repeated id.
    """
    template = mme_prompt_template(prompt)
    try:
        rows = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QuestionFileError(path, f"not a JSON file ({exc})") from None
    if not isinstance(rows, list):
        raise QuestionFileError(path, "expected a JSON list of questions")
    items: list[BenchItem] = []
    seen: set[str] = set()
    for index, row in enumerate(rows):
        try:
            item = _mme_item(row, index, template)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise QuestionFileError(path, f"item {index}: bad MME-RealWorld item ({exc})") from None
        if item.question_id in seen:
            raise QuestionFileError(path, f"item {index}: duplicate id {item.question_id!r}")
        seen.add(item.question_id)
        items.append(item)
    return items


def mme_prompt_template(prompt: str) -> str:
    """Resolve a prompt preset name or validate a custom template.

    Raises:
        ValueError: Neither a preset nor a template with ``{question}`` and ``{options}``.
    """
    if prompt in MME_PROMPTS:
        return MME_PROMPTS[prompt]
    if "{question}" not in prompt or "{options}" not in prompt:
        presets = ", ".join(MME_PROMPTS)
        raise ValueError(
            f"prompt must be one of {presets} or a template with {{question}} and {{options}}"
        )
    return prompt


def format_choice_prompt(template: str, question: str, choices: Iterable[str]) -> str:
    """Fill a multiple-choice template with a question and its option texts."""
    options = list(choices)
    letters = [string.ascii_uppercase[i] for i in range(len(options))]
    listed = ", ".join(letters[:-1]) + f", or {letters[-1]}" if len(letters) > 1 else letters[0]
    lines = "\n".join(f"({letter}) {text}" for letter, text in zip(letters, options, strict=True))
    return template.format(question=question, options=lines, letters=listed)


def _mme_item(row: Mapping[str, Any], index: int, template: str) -> BenchItem:
    """Build one multiple-choice item from an MME-RealWorld JSON object."""
    fields = {_canonical(key): value for key, value in row.items()}
    question_id = _field(fields, "question_id", default=str(index))
    question = str(_field(fields, "question")).strip()
    listed = _field(fields, "choices", default=None)
    if listed is None:
        listed = {key: fields[key] for key in fields if len(key) == 1 and key.isalpha()}
    elif isinstance(listed, str):  # would otherwise be read as one option per character
        raise ValueError("answer choices are one string, not a list or a mapping")
    choices = parse_choices(listed)
    if len(choices) < 2:
        raise ValueError("fewer than two answer options")
    answer = answer_letter(str(_field(fields, "answer")), choices)
    subtask = _field(fields, "subtask", default=None)
    category = _field(fields, "category", default=subtask) or "unknown"
    return BenchItem(
        question_id=str(question_id),
        image=str(_field(fields, "image")),
        question=format_choice_prompt(template, question, choices),
        ground_truth=answer,
        category=str(category).lower(),
        subset=str(subtask) if subtask else MME_RS_SUBSET,
        choices=choices,
    )


def _canonical(key: str) -> str:
    """Key spelling with case, spaces, underscores and hyphens removed."""
    return re.sub(r"[\s_\-]", "", key).lower()


_MISSING = object()


def _field(fields: Mapping[str, Any], name: str, default: Any = _MISSING) -> Any:
    """First present spelling of ``name``; ``default`` (or ``KeyError``) otherwise.

    A present but null field is refused rather than read as absent or as "None".
    """
    for spelling in _MME_KEYS[name]:
        if spelling in fields:
            if fields[spelling] is None:
                raise ValueError(f"{name} is null")
            return fields[spelling]
    if default is _MISSING:
        raise KeyError(f"no {name} field (accepted: {', '.join(_MME_KEYS[name])})")
    return default


def parse_choices(value: Iterable[str] | Mapping[str, Any]) -> tuple[str, ...]:
    """Option texts in letter order, from a list or a ``{letter: text}`` mapping.

    List entries may carry their letter (``"(A) red"``, ``"A. red"``, ``"A) red"``);
    it is removed only when it is the entry's own letter and is marked by brackets
    or punctuation, so an option reading ``"A red car"`` keeps its article.
    """
    if isinstance(value, Mapping):
        ordered = sorted((str(k).strip("() ").upper(), str(v)) for k, v in value.items())
        return tuple(text.strip() for _, text in ordered)
    texts = []
    for position, raw in enumerate(value):
        text = str(raw).strip()
        match = _LETTERED.match(text)
        if match and (match.group(1) or match.group(2)) == string.ascii_uppercase[position]:
            text = text[match.end() :]
        texts.append(text.strip())
    return tuple(texts)


def answer_letter(answer: str, choices: tuple[str, ...]) -> str:
    """The option letter of a ground truth given as a letter or as option text."""
    letters = string.ascii_uppercase[: len(choices)]
    cleaned = answer.strip().strip("().:").strip()
    if len(cleaned) == 1 and cleaned.upper() in letters:
        return cleaned.upper()
    for letter, text in zip(letters, choices, strict=True):
        if text.lower() == answer.strip().lower():
            return letter
    raise ValueError(f"ground truth {answer!r} is neither an option letter nor an option")
