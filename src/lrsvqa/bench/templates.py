"""Template QA from detection labels: unique references and LRS-VQA-style questions.

The paper (section 4.2) names each benchmark target by a *unique reference* ("the
top-most ship", "the largest dock") found from detection labels, and trains on 38K
template questions built from the same labels. This module does both for any list of
:class:`~lrsvqa.labels.LabeledObject`:

* :func:`find_unique_references` finds the objects a short phrase names without doubt.
  A reference is only emitted when it is *really* unique: the extreme object must beat
  the runner-up by a margin, so a human (or a model at full resolution) cannot
  reasonably pick a different object.
* :func:`generate_questions` turns them into questions in the LRS-VQA categories the
  labels support, worded like the official benchmark, as LRS-VQA JSONL records.
* :func:`to_llava_conversations` turns records into LLaVA SFT conversations.

Sizes passed in are ``(height, width)`` like the rest of the package; the JSONL
``image_size`` field is ``[width, height]`` as in the official LRS-VQA file. The
records follow the one LRS-VQA rule of :mod:`lrsvqa.types`, which also reads and
writes them.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrsvqa.imagery.reader import open_image
from lrsvqa.labels import LabeledObject, LabelFormat, find_image, read_labels

SHORT_ANSWER_PROMPT = "\n Answer the question using a single word or phrase."
# The official file spells the instruction differently for count questions; matching it
# keeps generated data indistinguishable from the benchmark by its formatting.
COUNT_SHORT_ANSWER_PROMPT = " \nAnswer the question using a single word or phrase."

TEMPLATE_CATEGORIES = (
    "count",
    "object category",
    "object color",
    "object shape",
    "rural or urban",
    "object background",
    "object position",
)

REFERENCE_KINDS = ("category-unique", "setting-qualified", "scene-positional")
COUNT_KIND = "count"  # count questions name no object, so they are a kind of their own
QUESTION_KINDS = (*REFERENCE_KINDS, COUNT_KIND)
SETTING_JOIN = " in the "
POSITION_KINDS = ("top-most", "bottom-most", "left-most", "right-most")
# (axis, extreme is the minimum): y for top/bottom, x for left/right.
_DIRECTIONS: dict[str, tuple[int, bool]] = {
    "top-most": (1, True),
    "bottom-most": (1, False),
    "left-most": (0, True),
    "right-most": (0, False),
}


@dataclass(frozen=True)
class UniquenessMargins:
    """How clearly a reference must single out its object.

    Attributes:
        position: For "top-most" etc.: the runner-up's centre must be at least this
            many extents (the extreme object's height for top/bottom, width for
            left/right) farther from the edge, and its leading edge must be too.
        area_ratio: For "largest"/"smallest": area of the larger of the two extreme
            objects over the smaller must exceed this.
        region_border: For position questions: the object's centre must be at least
            this fraction of the image side away from the 3x3 grid lines.
    """

    position: float = 0.5
    area_ratio: float = 1.5
    region_border: float = 0.05


DEFAULT_MARGINS = UniquenessMargins()


@dataclass(frozen=True)
class UniqueReference:
    """A phrase that names exactly one object of a group.

    Attributes:
        index: Index of the object in the list given to :func:`find_unique_references`.
        kinds: What makes it unique, e.g. ``("top-most",)``, ``("only",)`` or
            ``("top-most", "largest")`` for a combined reference.
        noun: What the group is called in text, e.g. ``"ship"`` or ``"object"``.
    """

    index: int
    kinds: tuple[str, ...]
    noun: str

    @property
    def text(self) -> str:
        """The reference as it reads in a question, e.g. ``"the top-most and the largest ship"``."""
        return f"the {' and the '.join(self.kinds)} {self.noun}"

    @property
    def reference_kind(self) -> str:
        """How the phrase finds its object: one of :data:`REFERENCE_KINDS`.

        "the only ship" needs the category alone, "the left-most vehicle in the parking
        lot" first the setting, "the top-most storage tank" a comparison over the scene.
        """
        if SETTING_JOIN in self.noun:
            return "setting-qualified"
        return "category-unique" if self.kinds == ("only",) else "scene-positional"


def question_kind(record: dict[str, Any]) -> str:
    """How a template question finds its object: its ``reference_kind``, or count."""
    return record.get("reference_kind", COUNT_KIND)


def display_name(category: str) -> str:
    """Category as it reads in a sentence: ``"small-vehicle"`` -> ``"small vehicle"``."""
    return " ".join(category.replace("_", " ").replace("-", " ").lower().split())


def plural(noun: str) -> str:
    """English plural of the last word, for "How many ships ...".

    Regular rules only; label vocabularies are nouns like "ship", "bus", "harbor".
    """
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def category_noun(obj: LabeledObject) -> str:
    """Group objects by their own category: "the top-most ship"."""
    return display_name(obj.category)


def _leading_edge(obj: LabeledObject, axis: int, toward_min: bool) -> float:
    """Box edge facing the side, signed so that smaller is always nearer that side."""
    return obj.hbox[axis] if toward_min else -obj.hbox[axis + 2]


def _centre(obj: LabeledObject, axis: int, toward_min: bool) -> float:
    """Box centre on the axis, signed like :func:`_leading_edge`."""
    value = obj.center[axis]
    return value if toward_min else -value


def _extreme_position(
    objects: Sequence[LabeledObject], indices: Sequence[int], kind: str, margin: float
) -> int | None:
    """Index of the object clearly farthest in one direction, or ``None`` if none is.

    Both the centre and the leading edge must be extreme: a long object can reach
    higher with its edge while a small one sits higher by its centre, and then
    "top-most" would be a matter of opinion.
    """
    axis, toward_min = _DIRECTIONS[kind]
    ranked = sorted(indices, key=lambda i: _centre(objects[i], axis, toward_min))
    best, runner_up = objects[ranked[0]], objects[ranked[1]]
    gap = _centre(runner_up, axis, toward_min) - _centre(best, axis, toward_min)
    extent = best.hbox[axis + 2] - best.hbox[axis]
    if gap <= 0 or gap < margin * extent:
        return None
    edge = _leading_edge(best, axis, toward_min)
    if any(_leading_edge(objects[i], axis, toward_min) <= edge for i in ranked[1:]):
        return None
    return ranked[0]


def _extreme_sizes(
    objects: Sequence[LabeledObject], indices: Sequence[int], ratio: float
) -> dict[int, str]:
    """Largest and smallest objects whose area stands out from the runner-up by ``ratio``.

    With two objects the comparative ("larger") is used, as the official questions do.
    """
    ranked = sorted(indices, key=lambda i: objects[i].footprint_area, reverse=True)
    areas = [objects[i].footprint_area for i in ranked]
    found: dict[int, str] = {}
    big, small = ("larger", "smaller") if len(ranked) == 2 else ("largest", "smallest")
    if areas[0] > 0 and areas[0] > ratio * areas[1]:
        found[ranked[0]] = big
    if areas[-1] > 0 and areas[-2] > ratio * areas[-1]:
        found[ranked[-1]] = small
    return found


def _group_references(
    objects: Sequence[LabeledObject],
    indices: Sequence[int],
    noun: str,
    margins: UniquenessMargins,
) -> list[UniqueReference]:
    """All unique references within one group (objects sharing a noun)."""
    if len(indices) == 1:
        return [UniqueReference(indices[0], ("only",), noun)]
    positions: dict[int, list[str]] = defaultdict(list)
    for kind in POSITION_KINDS:
        index = _extreme_position(objects, indices, kind, margins.position)
        if index is not None:
            positions[index].append(kind)
    sizes = _extreme_sizes(objects, indices, margins.area_ratio)
    refs: list[UniqueReference] = []
    for index in sorted(set(positions) | set(sizes)):
        refs.extend(UniqueReference(index, (kind,), noun) for kind in positions.get(index, []))
        if index in sizes:
            size = sizes[index]
            refs.append(UniqueReference(index, (size,), noun))
            refs.extend(UniqueReference(index, (k, size), noun) for k in positions.get(index, []))
    return refs


def find_unique_references(
    objects: Sequence[LabeledObject],
    *,
    margins: UniquenessMargins = DEFAULT_MARGINS,
    group: Callable[[LabeledObject], str | None] = category_noun,
) -> list[UniqueReference]:
    """Every reference that names exactly one object, with its group's noun.

    Args:
        objects: All labelled objects of one image; every one of them counts when
            deciding uniqueness, even those a caller will not ask about.
        margins: How clearly the named object must stand out.
        group: Noun an object is referred to by (``None`` leaves it out); by default
            its category, so "the top-most ship" is unique among ships only.

    Returns:
        References sorted by group noun then object index, so output is stable.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for index, obj in enumerate(objects):
        noun = group(obj)
        if noun is not None:
            groups[noun].append(index)
    refs: list[UniqueReference] = []
    for noun in sorted(groups):
        refs.extend(_group_references(objects, groups[noun], noun, margins))
    return refs


def setting_group(objects: Sequence[LabeledObject]) -> Callable[[LabeledObject], str | None]:
    """Group objects by category within their facility: "vehicle in the parking lot".

    Reads ``attributes["facility"]`` (the facility's kind, e.g. ``"parking lot"``) and
    ``attributes["facility_index"]``. A group is only formed where the category lies in
    one facility of that kind, so "the parking lot" names one place.
    """
    places: dict[tuple[str, str], set[Any]] = defaultdict(set)
    for obj in objects:
        facility = obj.attributes.get("facility")
        if isinstance(facility, str):
            places[(obj.category, facility)].add(obj.attributes.get("facility_index"))

    def group(obj: LabeledObject) -> str | None:
        facility = obj.attributes.get("facility")
        if not isinstance(facility, str) or len(places[(obj.category, facility)]) != 1:
            return None
        return f"{category_noun(obj)}{SETTING_JOIN}{facility}"

    return group


def image_region(obj: LabeledObject, image_size: tuple[int, int], border: float) -> str | None:
    """Which ninth of the image holds the object's centre ("top left", "center", ...).

    Returns ``None`` when the centre is within ``border`` (fraction of the side) of a
    grid line, where the answer would be a coin toss.
    """
    height, width = image_size
    cx, cy = obj.center
    names = []
    for value, side, labels in (
        (cy, height, ("top", "middle", "bottom")),
        (cx, width, ("left", "center", "right")),
    ):
        fraction = value / side
        if min(abs(fraction - 1 / 3), abs(fraction - 2 / 3)) < border:
            return None
        names.append(labels[min(2, max(0, int(fraction * 3)))])
    return "center" if names == ["middle", "center"] else " ".join(names)


@dataclass(frozen=True)
class _Template:
    text: str
    answer: Callable[[str], str] = str


def _yes_if(value: str) -> Callable[[str], str]:
    return lambda fact: "yes" if fact == value else "no"


_TEMPLATES: dict[str, tuple[_Template, ...]] = {
    "object color": (
        _Template("What color is {ref}?"),
        _Template("What is the color of {ref}?"),
        _Template("What is the predominant color of {ref}?"),
    ),
    "object shape": (
        _Template("What shape is {ref}?"),
        _Template("What is the shape of {ref}?"),
    ),
    "object category": (
        _Template("What is the category of {ref}?"),
        _Template("What type of {noun} is {ref}?"),
        _Template("What kind of {noun} is {ref}?"),
    ),
    "rural or urban": (
        _Template("Is {ref} located in a rural or urban area?"),
        _Template("Is the area surrounding {ref} rural or urban?"),
        _Template("Is the area surrounding {ref} best described as urban?", _yes_if("urban")),
        _Template("Is the area surrounding {ref} best described as rural?", _yes_if("rural")),
    ),
    "object background": (
        _Template("What type of ground is {ref} located on?"),
        _Template("What is the land cover surrounding {ref}?"),
        _Template("What is the background of {ref}?"),
    ),
    "object position": (
        _Template("In which part of the image is {ref} located?"),
        _Template("Where is {ref} located in the image?"),
    ),
}
_COUNT_TEMPLATES = (
    "How many {plural} are there in the image?",
    "What is the number of {name} in the image?",
    "What is the amount of {name} in the image?",
    "What is the count of {plural} in the image?",
)


def count_question(category: str, rng: random.Random) -> str:
    """A whole-image count question about one category, in an official wording."""
    name = display_name(category)
    return rng.choice(_COUNT_TEMPLATES).format(name=name, plural=plural(name))


def _supercategory(obj: LabeledObject) -> str | None:
    coarse = obj.attributes.get("supercategory")
    return display_name(coarse) if isinstance(coarse, str) and coarse else None


def _fact(
    category: str, obj: LabeledObject, image_size: tuple[int, int], margins: UniquenessMargins
) -> str | None:
    """The label-derived answer for a question category, or ``None`` if labels lack it."""
    if category == "object color":
        return obj.color
    if category == "object shape":
        return obj.shape
    if category == "object category":
        return display_name(obj.category)
    if category == "rural or urban":
        setting = obj.attributes.get("setting")
        return setting if setting in ("rural", "urban") else None
    if category == "object background":
        background = obj.attributes.get("background")
        return background if isinstance(background, str) and background else None
    return image_region(obj, image_size, margins.region_border)


def prompt_text(category: str, question: str) -> str:
    """The question with the official short-answer instruction, as models are asked it."""
    return question + (COUNT_SHORT_ANSWER_PROMPT if category == "count" else SHORT_ANSWER_PROMPT)


def lrsvqa_record(
    *,
    question_id: str,
    image: str,
    category: str,
    question: str,
    answer: str,
    image_size: tuple[int, int],
    obj: LabeledObject | None = None,
    reference_kind: str | None = None,
) -> dict[str, Any]:
    """One LRS-VQA JSONL record, with the official short-answer instruction appended.

    Args:
        question_id: Unique id of the question.
        image: Image path as it should appear in the file.
        category: LRS-VQA question category, e.g. ``"object color"``.
        question: The bare question.
        answer: The ground-truth short answer.
        image_size: ``(height, width)``; written as ``[width, height]`` like the benchmark.
        obj: The object asked about; its boxes are written (count questions have none).
        reference_kind: How the question names its object (:data:`REFERENCE_KINDS`);
            written as ``reference_kind`` when given.
    """
    record: dict[str, Any] = {
        "question_id": question_id,
        "image": image,
        "category": category,
        "text": prompt_text(category, question),
        "ground_truth": answer,
    }
    if obj is not None:
        record["hbox"] = [round(v) for v in obj.hbox]
        if obj.rbox is not None:
            record["rbox"] = [float(c) for point in obj.rbox for c in point]
    record["image_size"] = [image_size[1], image_size[0]]
    if reference_kind is not None:
        record["reference_kind"] = reference_kind
    return record


def _reference_candidates(
    category: str,
    objects: Sequence[LabeledObject],
    refs: Iterable[UniqueReference],
    image_size: tuple[int, int],
    margins: UniquenessMargins,
    rng: random.Random,
) -> list[tuple[str, str, LabeledObject, str]]:
    """One (question, answer, object, reference kind) per askable target.

    The reference kind is drawn first, uniformly among those naming the target, and
    then a reference of that kind, so no kind crowds out the others.
    """
    by_target: dict[int, list[UniqueReference]] = defaultdict(list)
    for ref in refs:
        if not objects[ref.index].attributes.get("difficult"):
            by_target[ref.index].append(ref)
    out = []
    for index in sorted(by_target):
        fact = _fact(category, objects[index], image_size, margins)
        if fact is None:
            continue
        kinds = sorted({ref.reference_kind for ref in by_target[index]})
        kind = rng.choice(kinds)
        ref = rng.choice([ref for ref in by_target[index] if ref.reference_kind == kind])
        template = rng.choice(_TEMPLATES[category])
        question = template.text.format(ref=ref.text, noun=ref.noun)
        out.append((question, template.answer(fact), objects[index], kind))
    return out


def generate_questions(
    objects: Sequence[LabeledObject],
    image_path_str: str,
    image_size: tuple[int, int],
    *,
    seed: int,
    categories: Sequence[str] = TEMPLATE_CATEGORIES,
    max_per_image: int | None = 16,
    margins: UniquenessMargins = DEFAULT_MARGINS,
    max_count: int = 20,
    question_id_prefix: str | None = None,
) -> list[dict[str, Any]]:
    """Template questions about one image, as LRS-VQA JSONL records.

    Only what the labels support is asked: colour and shape when objects carry them,
    rural/urban when ``attributes["setting"]`` says so, background (the ground under
    the object) from ``attributes["background"]``, category via the generic
    "object" group and via coarse types (``attributes["supercategory"]``, e.g. FAIR1M
    "airplane"), position from the 3x3 grid. Objects flagged ``difficult`` still count
    for uniqueness and counts but are never the subject.

    Args:
        objects: All labelled objects of the image.
        image_path_str: Image path written into each record.
        image_size: ``(height, width)`` of the image in pixels.
        seed: Seeds reference, wording and subset choice; same inputs, same output.
        categories: Question categories to generate, from :data:`TEMPLATE_CATEGORIES`.
        max_per_image: Cap on questions, filled round-robin over categories so no
            category crowds out the others; ``None`` for no cap.
        margins: How clearly a reference must single out its object.
        max_count: Count questions are skipped above this (the benchmark's answers
            stay within 20; "how many of 400 cars" tests patience, not perception).
        question_id_prefix: Ids are ``{prefix}_{n}``; defaults to the image stem.

    Raises:
        ValueError: For an unknown category.
    """
    unknown = set(categories) - set(TEMPLATE_CATEGORIES)
    if unknown:
        raise ValueError(f"unknown template categories {sorted(unknown)}")
    rng = random.Random(seed)
    category_refs = [
        *find_unique_references(objects, margins=margins),
        # "the only ship in the harbour" would be "the only ship" with more words: a
        # setting-qualified reference picks one of several objects in its setting.
        *(
            ref
            for ref in find_unique_references(
                objects, margins=margins, group=setting_group(objects)
            )
            if ref.kinds != ("only",)
        ),
    ]
    type_refs = [
        *find_unique_references(objects, margins=margins, group=lambda _: "object"),
        *find_unique_references(objects, margins=margins, group=_supercategory),
    ]
    pools: list[tuple[str, list[tuple[str, str, LabeledObject | None, str | None]]]] = []
    for category in categories:
        if category == "count":
            counts = Counter(obj.category for obj in objects)
            pool: list[tuple[str, str, LabeledObject | None, str | None]] = [
                (count_question(name, rng), str(n), None, None)
                for name, n in sorted(counts.items())
                if n <= max_count
            ]
        else:
            refs = type_refs if category == "object category" else category_refs
            pool = list(_reference_candidates(category, objects, refs, image_size, margins, rng))
        rng.shuffle(pool)
        pools.append((category, pool))
    limit = max_per_image if max_per_image is not None else sum(len(p) for _, p in pools)
    chosen: list[tuple[str, str, str, LabeledObject | None, str | None]] = []
    while len(chosen) < limit and any(pool for _, pool in pools):
        for category, pool in pools:
            if pool and len(chosen) < limit:
                chosen.append((category, *pool.pop(0)))
    prefix = question_id_prefix or Path(image_path_str).stem
    return [
        lrsvqa_record(
            question_id=f"{prefix}_{n}",
            image=image_path_str,
            category=category,
            question=question,
            answer=answer,
            image_size=image_size,
            obj=obj,
            reference_kind=kind,
        )
        for n, (category, question, answer, obj, kind) in enumerate(chosen, start=1)
    ]


def labelled_image_size(image: Path, stated: tuple[int, int] | None) -> tuple[int, int]:
    """``(height, width)`` from the labels when they state it, else from the image header."""
    if stated is not None:
        return stated
    with open_image(image) as large:
        return large.height, large.width


def generate_from_labels(
    label_files: Iterable[Path],
    images_dir: Path,
    fmt: LabelFormat,
    *,
    seed: int = 0,
    subset: str = "TPL",
    categories: Sequence[str] = TEMPLATE_CATEGORIES,
    max_per_image: int | None = 16,
    margins: UniquenessMargins = DEFAULT_MARGINS,
) -> list[dict[str, Any]]:
    """Template questions for every labelled image of a dataset.

    Each image gets its own seed derived from ``seed`` and the label name, so adding
    or removing one image leaves the questions about the others unchanged.

    Args:
        label_files: Label files, one per image.
        images_dir: Folder holding the images; record paths are relative to it, so it
            is the data root the evaluation runner needs.
        fmt: Label format of the files.
        seed: Base seed.
        subset: Ids are ``{subset}_{n}`` like the official ``FAIR_1``, so loaders
            that read the subset from the id prefix group them together.
        categories: Question categories to generate.
        max_per_image: Cap on questions per image.
        margins: How clearly a reference must single out its object.
    """
    records: list[dict[str, Any]] = []
    for label_file in label_files:
        labels = read_labels(label_file, fmt)
        image = find_image(images_dir, labels)
        records.extend(
            generate_questions(
                labels.objects,
                image.relative_to(images_dir).as_posix(),
                labelled_image_size(image, labels.image_size),
                seed=random.Random(f"{seed}:{labels.name}").getrandbits(32),
                categories=categories,
                max_per_image=max_per_image,
                margins=margins,
            )
        )
    for n, record in enumerate(records, start=1):
        record["question_id"] = f"{subset}_{n}"
    return records


def to_llava_conversations(
    records: Iterable[Mapping[str, Any]], *, multi_turn: bool = True, max_turns: int = 8
) -> list[dict[str, Any]]:
    """LLaVA SFT samples from LRS-VQA records.

    Args:
        records: LRS-VQA records; their ``text`` (with the short-answer instruction,
            as LLaVA-1.5's short-answer VQA data has) is the human turn.
        multi_turn: Group questions about the same image into one conversation, up to
            ``max_turns`` questions each, so training sees each large image fewer times.
        max_turns: Question-answer pairs per conversation when ``multi_turn``.

    Returns:
        ``{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}]}`` dicts;
        the first human turn starts with ``<image>`` and a newline; ids are the first question's.
    """
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    samples: list[list[Mapping[str, Any]]] = []
    for record in records:
        if not multi_turn:
            samples.append([record])
            continue
        group = groups[record["image"]]
        if not group:
            samples.append(group)
        group.append(record)
        if len(group) == max_turns:
            del groups[record["image"]]
    out = []
    for sample in samples:
        turns = []
        for n, record in enumerate(sample):
            text = record["text"].strip()
            turns.append({"from": "human", "value": f"<image>\n{text}" if n == 0 else text})
            turns.append({"from": "gpt", "value": str(record["ground_truth"])})
        first = sample[0]
        out.append({"id": first["question_id"], "image": first["image"], "conversations": turns})
    return out
