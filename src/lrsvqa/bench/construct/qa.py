"""Stage 3: question-answer pairs about each target from a vision LLM.

Each marked crop goes to an OpenAI-compatible chat model with the target's unique
reference, asking for short-answer pairs about colour, shape, status, category,
background, reasoning and rural/urban setting (the paper used GPT-4V). The reply
must be JSON; each pair is validated (known category, the question names the target
by its reference and does not mention the crop, the answer is short) and invalid
pairs are dropped with the reason recorded. A reply with no valid pair is recorded
as ``bad_reply``: it was paid for, so it is never requested again. Requests that
fail after all retries are recorded as ``failed`` and retried by the next run.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lrsvqa.bench.construct.llm import ChatClient, RequestFailed, user_message
from lrsvqa.bench.construct.store import CROPS_FILE, QA_FILE, JsonlAppender, latest, read_jsonl
from lrsvqa.bench.construct.targets import load_targets

logger = logging.getLogger(__name__)

# Short names the model is asked to use, mapped to LRS-VQA category names.
QA_CATEGORIES: dict[str, str] = {
    "color": "object color",
    "shape": "object shape",
    "status": "object status",
    "category": "object category",
    "background": "object background",
    "reasoning": "reasoning",
    "rural or urban": "rural or urban",
}
FINISHED = ("ok", "bad_reply")
_BANNED = re.compile(
    r"\b(red (box|rectangle|outline)|bounding box|highlighted|cropped|this crop)\b", re.I
)
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")

SYSTEM_PROMPT = (
    "You write visual question-answer pairs for a benchmark on very large remote "
    "sensing images. Questions are later asked about the whole large image, so they "
    "must name the object only by the reference you are given."
)
USER_PROMPT = """This is a crop of a large remote sensing image. The object inside the red \
box is {reference} of the whole large image.
Write up to {pairs} question-answer pairs about that object, each about a different aspect \
from: {categories}.
Rules:
- Name the object exactly as "{reference}". Never mention the red box, the crop or the \
picture frame.
- Ask only about what is clearly visible; skip an aspect you cannot answer with certainty.
- Each answer is a single word or a short phrase of at most {words} words.
Reply with JSON only, in this form:
{{"qa": [{{"category": "color", "question": "What color is {reference}?", "answer": "white"}}]}}"""


@dataclass(frozen=True)
class ParsedReply:
    """Valid pairs from one reply and why the others were dropped."""

    pairs: list[dict[str, str]]
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class QaReport:
    """What stage 3 did this run."""

    ok: int
    bad_reply: int
    failed: int
    skipped: int
    missing_crops: int


def build_prompt(reference: str, *, pairs: int, max_answer_words: int) -> str:
    """The instruction sent with a crop."""
    return USER_PROMPT.format(
        reference=reference,
        pairs=pairs,
        categories=", ".join(QA_CATEGORIES),
        words=max_answer_words,
    )


def _json_payload(text: str) -> Any:
    """The JSON in a reply, tolerating a code fence or prose around one object."""
    stripped = _FENCE.sub("", text.strip())
    try:
        return json.loads(stripped)
    except json.JSONDecodeError:
        start, end = stripped.find("{"), stripped.rfind("}")
        if start < 0 or end <= start:
            raise
        return json.loads(stripped[start : end + 1])


def normalize_short_answer(answer: str) -> str:
    """Lower case, single spaces, no trailing full stop: the benchmark's answer style."""
    return " ".join(answer.strip().rstrip(".").lower().split())


def _check_pair(item: Any, reference: str, max_words: int) -> dict[str, str] | str:
    """A valid pair in LRS-VQA terms, or the reason it is not one."""
    if not isinstance(item, dict):
        return "pair is not an object"
    category = str(item.get("category", "")).strip().lower().removeprefix("object ")
    question = item.get("question")
    answer = item.get("answer")
    if category not in QA_CATEGORIES:
        return f"unknown category {category!r}"
    if not isinstance(question, str) or not question.strip().endswith("?"):
        return "question missing or not a question"
    if reference.lower() not in question.lower():
        return f"question does not name {reference!r}: {question!r}"
    if _BANNED.search(question):
        return f"question refers to the crop or box: {question!r}"
    if isinstance(answer, bool) or not isinstance(answer, str | int | float):
        return "answer missing"
    short = normalize_short_answer(str(answer))
    if not short or len(short.split()) > max_words:
        return f"answer not a short phrase: {answer!r}"
    return {"category": QA_CATEGORIES[category], "question": question.strip(), "answer": short}


def parse_reply(text: str, reference: str, *, max_answer_words: int = 4) -> ParsedReply:
    """Validate a model reply into QA pairs.

    Accepts ``{"qa": [...]}`` or a bare list of ``{category, question, answer}``.
    Duplicate questions are dropped.
    """
    try:
        payload = _json_payload(text)
    except json.JSONDecodeError as err:
        return ParsedReply([], [f"reply is not JSON: {err.msg}"])
    items = payload.get("qa") if isinstance(payload, dict) else payload
    if not isinstance(items, list):
        return ParsedReply([], ['reply has no "qa" list'])
    pairs: list[dict[str, str]] = []
    problems: list[str] = []
    seen: set[str] = set()
    for item in items:
        checked = _check_pair(item, reference, max_answer_words)
        if isinstance(checked, str):
            problems.append(checked)
        elif checked["question"].lower() in seen:
            problems.append(f"duplicate question {checked['question']!r}")
        else:
            seen.add(checked["question"].lower())
            pairs.append(checked)
    return ParsedReply(pairs, problems)


def _ask(
    client: ChatClient,
    target: dict[str, Any],
    crop: Path,
    *,
    pairs: int,
    max_answer_words: int,
) -> dict[str, Any]:
    """One target's stage-3 record: ok, bad_reply (paid, kept) or failed (retried later)."""
    reference = target["reference"]
    prompt = build_prompt(reference, pairs=pairs, max_answer_words=max_answer_words)
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        user_message(prompt, [np.asarray(Image.open(crop).convert("RGB"))]),
    ]
    record: dict[str, Any] = {"target_id": target["target_id"], "model": client.settings.model}
    try:
        reply = client.chat(messages)
    except RequestFailed as err:
        return {**record, "status": "failed", "error": str(err)}
    parsed = parse_reply(reply.text, reference, max_answer_words=max_answer_words)
    record.update(
        status="ok" if parsed.pairs else "bad_reply",
        pairs=parsed.pairs,
        problems=parsed.problems,
        prompt_tokens=reply.prompt_tokens,
        completion_tokens=reply.completion_tokens,
    )
    if not parsed.pairs:
        record["reply"] = reply.text
    return record


def _pending_targets(out_dir: Path) -> tuple[list[tuple[dict[str, Any], Path]], int, int]:
    """Targets with a crop and no finished QA record; also counts of skipped and uncropped."""
    finished = {
        key
        for key, record in latest(read_jsonl(out_dir / QA_FILE), lambda r: r["target_id"]).items()
        if record["status"] in FINISHED
    }
    crops = latest(read_jsonl(out_dir / CROPS_FILE), lambda r: r["target_id"])
    pending, skipped, missing = [], 0, 0
    for record in load_targets(out_dir):
        for target in record["targets"]:
            if target["target_id"] in finished:
                skipped += 1
            elif target["target_id"] not in crops:
                missing += 1
            else:
                pending.append((target, out_dir / crops[target["target_id"]]["crop"]))
    return pending, skipped, missing


def run_qa(
    out_dir: Path,
    client: ChatClient,
    *,
    max_concurrency: int = 4,
    pairs_per_target: int = 5,
    max_answer_words: int = 4,
) -> QaReport:
    """Ask the model about every cropped target without a finished record.

    Args:
        out_dir: Pipeline output folder.
        client: Chat client (its usage counter accumulates tokens).
        max_concurrency: Requests in flight at once, to stay under rate limits.
        pairs_per_target: Pairs asked for per target.
        max_answer_words: Longest accepted answer, in words.

    Raises:
        ApiConfigError: Bad key and the other configuration errors, stopping the
            run; results already received are kept.
    """
    pending, skipped, missing = _pending_targets(out_dir)
    counts = {"ok": 0, "bad_reply": 0, "failed": 0}
    with (
        JsonlAppender(out_dir / QA_FILE) as out,
        ThreadPoolExecutor(max_workers=max(1, max_concurrency)) as pool,
    ):
        futures: Sequence[Future[dict[str, Any]]] = [
            pool.submit(
                _ask,
                client,
                target,
                crop,
                pairs=pairs_per_target,
                max_answer_words=max_answer_words,
            )
            for target, crop in pending
        ]
        try:
            for future in as_completed(futures):
                record = future.result()
                out.write(record)
                counts[record["status"]] += 1
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    logger.info("qa: %s, %d already done", counts, skipped)
    return QaReport(**counts, skipped=skipped, missing_crops=missing)
