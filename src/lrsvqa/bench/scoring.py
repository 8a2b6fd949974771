"""Answer scoring: open-ended (WordNet), multiple choice (option letter), localisation.

Open-ended answers (LRS-VQA, synthetic) are scored under one of two rules
(:data:`RULES`); reports show OA/AA under both, the paper's first.

* ``rule="paper"`` is the official script's rule to the letter
  (``Script/evaluation_LRSVQA.py`` of VisionXLab/LRS-VQA): both strings are only
  lower-cased (no strip, nothing else); equal strings are correct; otherwise the
  answer is correct when some pair of WordNet synsets of the two raw strings has a
  path similarity above 0.8. A phrase with a space goes to WordNet as it is, so it
  usually has no synsets (``"dark blue"``, ``"parking lot"``), and a trailing space
  or full stop makes an answer wrong. Quote this rule beside the paper's numbers.
* ``rule="normalised"`` (the default) first rewrites both strings, because
  free-form model output ("Yes, it is.", "There are three ships.") would otherwise
  be marked wrong for its wording rather than its content; multi-word phrases then
  go to WordNet with ``_`` for spaces, WordNet's spelling of compounds. It accepts,
  where the paper's rule does not, e.g. ``"Yes, it is."`` for ``yes``, ``"three
  ships"`` for ``3``, ``"car park"`` for ``parking lot`` and ``"navy"`` for ``dark
  blue`` (WordNet synonyms of the compound), ``" yes"`` for ``yes``. Rules, in order:

  1. Unicode NFKC, lower case, runs of whitespace collapsed.
  2. A leading ``answer:`` / ``the answer is`` is dropped.
  3. Thousands separators go (``1,000`` -> ``1000``); every other punctuation mark
     becomes a space (``light-blue`` -> ``light blue``, ``ship.`` -> ``ship``).
  4. The articles ``a``, ``an``, ``the`` are removed.
  5. Number words from zero to ninety-nine become digits (``twenty-one`` -> ``21``).
  6. When the ground truth is ``yes`` or ``no`` and the answer starts with ``yes``
     or ``no``, the answer is that first word (``yes, it is parked`` -> ``yes``).
  7. When the ground truth is a whole number and the answer contains exactly one
     whole number, the answer is that number (``there are 3 ships`` -> ``3``;
     ``3 or 4`` keeps two numbers and stays wrong).

Multiple-choice answers (MME-RealWorld-RS) are reduced to an option letter and
compared with the ground-truth letter: under ``rule="paper"`` by :func:`paper_choice`,
the rule of MME-RealWorld's scorer (``evaluation/eval_your_results.py``), which the
LRS-VQA authors run on their MME-RealWorld-RS answers, to the letter; under
``rule="normalised"`` by :func:`extract_choice`, which takes no capital inside a word
for a letter ("Blue" is not B) and also reads option text.

Localisation: an item's object box (``hbox``) counts as found when its centre lies
inside one of the boxes the strategy selected, or when at least half of its area is
covered by the union of those boxes (:func:`hbox_covered`).
"""

from __future__ import annotations

import itertools
import re
import string
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lrsvqa.bench.datasets import (
    MME_RS_SUBSET,
    BenchItem,
    Box,
    answer_letter,
    as_box,
    parse_choices,
    subset_of,
)

SIMILARITY_THRESHOLD = 0.8
COVERAGE_THRESHOLD = 0.5
# Open-ended scoring rules, the paper's first (the order reports show them in).
PAPER_RULE = "paper"
NORMALISED_RULE = "normalised"
RULES = (PAPER_RULE, NORMALISED_RULE)
DEFAULT_RULE = NORMALISED_RULE

_UNITS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_NUMBER_WORDS = {word: value for value, word in enumerate(_UNITS)} | {
    word: 20 + 10 * index for index, word in enumerate(_TENS)
}
_ARTICLES = frozenset({"a", "an", "the"})
_ANSWER_PREFIX = re.compile(r"^(?:the\s+)?(?:final\s+)?answer\b(?:\s+is)?\s*:?\s*")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_PUNCTUATION = re.compile(r"[^\w\s]|_")
_WHOLE_NUMBER = re.compile(r"^\d+$")


def normalize_answer(text: str) -> str:
    """Apply normalisation rules 1-5 of the module docstring."""
    text = " ".join(unicodedata.normalize("NFKC", text).lower().split())
    text = _ANSWER_PREFIX.sub("", text)
    text = _PUNCTUATION.sub(" ", _THOUSANDS.sub("", text))
    words = [word for word in text.split() if word not in _ARTICLES]
    return " ".join(_numbers_to_digits(words))


def _numbers_to_digits(words: list[str]) -> list[str]:
    """Replace number words by digits, joining ``twenty one`` into ``21``."""
    out: list[str] = []
    after_tens = False
    for word in words:
        value = _NUMBER_WORDS.get(word)
        if value is not None and after_tens and 0 < value < 10:
            out[-1] = str(int(out[-1]) + value)
            after_tens = False
            continue
        after_tens = word in _TENS
        out.append(word if value is None else str(value))
    return out


def _focus(answer: str, ground_truth: str) -> str:
    """Apply rules 6-7: keep the yes/no word or the single number the answer gives."""
    words = answer.split()
    if ground_truth in {"yes", "no"} and words and words[0] in {"yes", "no"}:
        return words[0]
    if _WHOLE_NUMBER.match(ground_truth):
        numbers = [word for word in words if _WHOLE_NUMBER.match(word)]
        if len(numbers) == 1:
            return numbers[0]
    return answer


def is_correct(prediction: str, ground_truth: str, rule: str = DEFAULT_RULE) -> bool:
    """Whether an open-ended answer matches the ground truth under ``rule``.

    Args:
        prediction: The model's answer as written.
        ground_truth: The benchmark's answer.
        rule: ``"paper"`` or ``"normalised"`` (module docstring).

    Raises:
        ValueError: Unknown rule.
        lrsvqa.bench.wordnet.WordNetUnavailableError: The strings differ and WordNet
            is not installed.
    """
    from lrsvqa.bench.wordnet import max_path_similarity

    if rule == PAPER_RULE:
        answer, truth = prediction.lower(), ground_truth.lower()
        return answer == truth or max_path_similarity(answer, truth) > SIMILARITY_THRESHOLD
    if rule != NORMALISED_RULE:
        raise ValueError(f"unknown scoring rule {rule!r}; known: {', '.join(RULES)}")
    truth = normalize_answer(ground_truth)
    answer = _focus(normalize_answer(prediction), truth)
    if not answer:
        return False
    if answer == truth:
        return True
    compound = max_path_similarity(answer.replace(" ", "_"), truth.replace(" ", "_"))
    return compound > SIMILARITY_THRESHOLD


_WHOLE_LETTER = re.compile(r"^\(?([A-Za-z])\)?[.:)]?$")
_LEADING_LETTER = re.compile(r"^(?:\(([A-Z])\)|([A-Z])[.:)])(?:\s|$)")
_CUED_LETTER = re.compile(
    r"\b(?i:answer|option|choice)\s*(?i:is\s*)?:?\s*(?:\(([A-Za-z])\)|([A-Z])(?![A-Za-z]))"
)
_BRACKETED_LETTER = re.compile(r"\(([A-Z])\)")
_LONE_LETTER = re.compile(r"(?<![A-Za-z'])([B-Z])(?![A-Za-z'])")


def extract_choice(text: str, choices: Sequence[str]) -> str:
    """The option letter a free-text answer picks, or ``""`` when it picks none.

    Tried in order, each accepting only letters of the offered options:

    1. the whole answer is a letter (``"B"``, ``"(b)"``, ``"C."``);
    2. the answer starts with a marked letter (``"(B) red"``, ``"B. red"``, ``"B: red"``);
    3. a cue word then a letter (``"The answer is B"``, ``"option (c)"``);
    4. the first bracketed capital (``"... so (D)"``);
    5. option text: the normalised answer equals one option, or contains exactly one;
    6. a lone capital letter other than ``A`` (which is usually the article).
    """
    letters = string.ascii_uppercase[: len(choices)]
    stripped = text.strip()
    whole = _WHOLE_LETTER.match(stripped)
    if whole and whole.group(1).upper() in letters:
        return whole.group(1).upper()
    leading = _LEADING_LETTER.match(stripped)
    if leading and (leading.group(1) or leading.group(2)) in letters:
        return leading.group(1) or leading.group(2)
    for pattern in (_CUED_LETTER, _BRACKETED_LETTER):
        for match in pattern.finditer(stripped):
            letter = next(group for group in match.groups() if group).upper()
            if letter in letters:
                return letter
    by_text = _choice_by_text(stripped, choices)
    if by_text:
        return by_text
    for match in _LONE_LETTER.finditer(stripped):
        if match.group(1) in letters:
            return match.group(1)
    return ""


#: What MME-RealWorld's scorer deletes from an answer before looking for a letter, as its
#: list evaluates: two pairs of its strings have no comma between them, so Python joins
#: each pair into one string and neither half is deleted on its own.
MME_ANSWER_PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option isThe correct option is",
    "Best answer:Best option:",
)
#: More words than this and no capital A-E: MME-RealWorld's scorer reads no letter.
MME_WORD_LIMIT = 10
_MME_LETTER = re.compile(r"[ABCDE]")


def paper_choice(text: str, choices: Sequence[str]) -> str:
    """The option letter MME-RealWorld's scorer reads from an answer, ``""`` for none.

    Its rule to the letter, quirks included, so that scores compare with the paper's:

    1. the answer is stripped and every occurrence of each of
       :data:`MME_ANSWER_PREFIXES` is deleted, in that order;
    2. the first capital ``A``-``E`` anywhere is the letter (``"Blue"`` picks B);
    3. without one, an answer of more than :data:`MME_WORD_LIMIT` words picks nothing;
    4. else the first option, written ``(X) text`` and lower-cased, that contains the
       lower-cased answer gives its letter; an empty answer is in every option and
       picks A.
    """
    answer = text.strip()
    for prefix in MME_ANSWER_PREFIXES:
        answer = answer.replace(prefix, "")
    found = _MME_LETTER.search(answer)
    if found:
        return found.group()
    if len(answer.split()) > MME_WORD_LIMIT:
        return ""
    for letter, option in zip(string.ascii_uppercase, choices, strict=False):
        if answer.lower() in f"({letter}) {option}".lower():
            return letter
    return ""


#: How each scoring rule reads the option letter of a multiple-choice answer.
CHOICE_READERS = {PAPER_RULE: paper_choice, NORMALISED_RULE: extract_choice}


def _choice_by_text(text: str, choices: Sequence[str]) -> str:
    """Letter of the option whose text the answer equals or uniquely contains."""
    answer = normalize_answer(text)
    options = [normalize_answer(choice) for choice in choices]
    for index, option in enumerate(options):
        if option and option == answer:
            return string.ascii_uppercase[index]
    padded = f" {answer} "
    contained = [
        index for index, option in enumerate(options) if option and f" {option} " in padded
    ]
    return string.ascii_uppercase[contained[0]] if len(contained) == 1 else ""


def hbox_covered(hbox: Box, boxes: Iterable[Box]) -> bool:
    """Whether selected ``boxes`` find an object: centre inside one, or half its area."""
    boxes = list(boxes)
    if not boxes:
        return False
    x0, y0, x1, y1 = hbox
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if any(b[0] <= cx <= b[2] and b[1] <= cy <= b[3] for b in boxes):
        return True
    area = (x1 - x0) * (y1 - y0)
    return area > 0 and _covered_area(hbox, boxes) / area >= COVERAGE_THRESHOLD


def _covered_area(target: Box, boxes: Sequence[Box]) -> float:
    """Area of ``target`` inside the union of ``boxes`` (exact, by grid compression)."""
    x0, y0, x1, y1 = target
    clipped = [
        (max(b[0], x0), max(b[1], y0), min(b[2], x1), min(b[3], y1))
        for b in boxes
        if b[2] > x0 and b[0] < x1 and b[3] > y0 and b[1] < y1
    ]
    xs = sorted({c for b in clipped for c in (b[0], b[2])})
    ys = sorted({c for b in clipped for c in (b[1], b[3])})
    total = 0.0
    for left, right in itertools.pairwise(xs):
        for bottom, top in itertools.pairwise(ys):
            if any(
                b[0] <= left and right <= b[2] and b[1] <= bottom and top <= b[3] for b in clipped
            ):
                total += (right - left) * (top - bottom)
    return total


@dataclass(frozen=True)
class ScoredItem:
    """The verdict on one answer.

    Attributes:
        question_id: Item id.
        subset: Benchmark part, for per-subset accuracy.
        category: Question type, for per-category accuracy.
        correct: Whether the answer is right under the report's rule (an errored
            item is wrong).
        by_rule: Whether it is right under each rule of :data:`RULES`.
        error: The item's recorded error, if any.
        localised: Whether the selected boxes found the item's object; ``None`` when
            the item has no box or errored.
        selected_boxes: Whether the strategy reported any selected box for the item.
    """

    question_id: str
    subset: str
    category: str
    correct: bool
    by_rule: Mapping[str, bool] = field(default_factory=dict)
    error: str | None = None
    localised: bool | None = None
    selected_boxes: bool = False


# Field spellings accepted in answer files written by other tools.
PREDICTION_KEYS = ("answer", "text", "output", "Output", "prediction", "pred")
TRUTH_KEYS = ("ground_truth", "Ground truth", "gt_answer", "gt")
CATEGORY_KEYS = ("category", "Category")
SUBSET_KEYS = ("subset", "Subtask")
CHOICE_KEYS = ("choices", "Answer choices", "Answer Choices", "options")


def score_record(
    record: Mapping[str, Any], item: BenchItem | None = None, *, rule: str = DEFAULT_RULE
) -> ScoredItem:
    """Score one answer-file line.

    Args:
        record: Must have ``question_id`` and a prediction (first of
            :data:`PREDICTION_KEYS`). Without ``item`` it must also carry the ground
            truth (:data:`TRUTH_KEYS`) and, for per-category numbers, a category;
            options (:data:`CHOICE_KEYS`) make it a multiple-choice item.
        item: The benchmark item, whose ground truth, category, subset, options and
            box take precedence over the record's.
        rule: The rule of ``correct`` (open-ended items); ``by_rule`` has every rule.

    Raises:
        KeyError: No prediction, or no ground truth and no ``item``.
        ValueError: Unknown rule.
    """
    question_id = str(record["question_id"])
    if item is None:
        item = _item_from_record(record)
    error = record.get("error") or None
    prediction = "" if error else str(_first(record, PREDICTION_KEYS))
    if rule not in RULES:
        raise ValueError(f"unknown scoring rule {rule!r}; known: {', '.join(RULES)}")
    if error:
        by_rule = dict.fromkeys(RULES, False)
    elif item.is_multiple_choice:
        by_rule = {
            name: CHOICE_READERS[name](prediction, item.choices) == item.ground_truth
            for name in RULES
        }
    else:
        by_rule = {name: is_correct(prediction, item.ground_truth, name) for name in RULES}
    boxes = [tuple(box) for box in record.get("selected_boxes") or []]
    localised = None
    if item.hbox is not None and not error:
        localised = hbox_covered(item.hbox, boxes)
    return ScoredItem(
        question_id=question_id,
        subset=item.subset,
        category=item.category,
        correct=by_rule[rule],
        by_rule=by_rule,
        error=str(error) if error else None,
        localised=localised,
        selected_boxes=bool(boxes),
    )


def _item_from_record(record: Mapping[str, Any]) -> BenchItem:
    """The benchmark facts a self-contained answer record carries."""
    question_id = str(record["question_id"])
    choices = parse_choices(_first(record, CHOICE_KEYS, None) or ())
    truth = str(_first(record, TRUTH_KEYS))
    if choices:
        truth = answer_letter(truth, choices)
    subset = _first(record, SUBSET_KEYS, None) or (
        MME_RS_SUBSET if choices else subset_of(question_id)
    )
    return BenchItem(
        question_id=question_id,
        image=str(record.get("image", "")),
        question=str(record.get("question", "")),
        ground_truth=truth,
        category=str(_first(record, CATEGORY_KEYS, "all")),
        subset=str(subset),
        choices=choices,
        hbox=as_box(record.get("hbox")),
    )


_REQUIRED = object()


def _first(record: Mapping[str, Any], keys: Sequence[str], default: Any = _REQUIRED) -> Any:
    """Value of the first present key; ``default`` (or ``KeyError``) otherwise."""
    for key in keys:
        if key in record and record[key] is not None:
            return record[key]
    if default is _REQUIRED:
        raise KeyError(f"none of the fields {', '.join(keys)}")
    return default
