"""The LRS-VQA construction pipeline against a real chat-completions server on loopback."""

import base64
import io
import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from lrsvqa.app.cli import app
from lrsvqa.bench.construct.crops import context_window, run_crops
from lrsvqa.bench.construct.llm import ApiConfigError, ApiSettings, ChatClient, RequestFailed
from lrsvqa.bench.construct.pipeline import BuildConfig, build_benchmark
from lrsvqa.bench.construct.qa import parse_reply
from lrsvqa.bench.construct.quality import Question, budget_size, evaluate, run_quality
from lrsvqa.bench.construct.store import JsonlAppender, read_jsonl
from lrsvqa.bench.construct.targets import run_targets
from lrsvqa.bench.datasets import load_lrs_vqa

Reply = tuple[int, Any, dict[str, str]]


def completion(text: str | None, model: str = "fake") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
    }


def error(status: int, message: str = "nope") -> Reply:
    return status, {"error": {"message": message, "type": "x", "code": None}}, {}


class FakeChatServer:
    """A chat-completions endpoint on 127.0.0.1 that records requests and replies by script."""

    def __init__(self, respond: Callable[[dict[str, Any], int], Reply]) -> None:
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests.append(body)
                    n = len(server.requests)
                status, payload, headers = respond(body, n)
                data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers: list[FakeChatServer] = []

    def start(respond: Callable[[dict[str, Any], int], Reply]) -> FakeChatServer:
        servers.append(FakeChatServer(respond))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def settings(server: FakeChatServer, **kw: Any) -> ApiSettings:
    values = {"timeout": 5.0, "max_retries": 2}
    return ApiSettings(server.base_url, "fake-vl", "sk-secret-123", **(values | kw))


def message_text(body: dict[str, Any]) -> str:
    parts = []
    for message in body["messages"]:
        content = message["content"]
        if isinstance(content, str):
            parts.append(content)
        else:
            parts.extend(p["text"] for p in content if p["type"] == "text")
    return "\n".join(parts)


def sent_image(body: dict[str, Any]) -> Image.Image:
    for message in body["messages"]:
        for part in message["content"] if isinstance(message["content"], list) else []:
            if part["type"] == "image_url":
                url = part["image_url"]["url"]
                assert url.startswith("data:image/png;base64,")
                return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    raise AssertionError("no image in request")


# --- the chat client ------------------------------------------------------------------


def test_client_retries_429_honouring_retry_after_and_counts_tokens(serve):
    def respond(body, n):
        if n == 1:
            return 429, {"error": {"message": "slow down"}}, {"Retry-After": "0.3"}
        return 200, completion("hello"), {}

    server = serve(respond)
    client = ChatClient(settings(server))
    start = time.monotonic()
    reply = client.chat([{"role": "user", "content": "hi"}])
    assert time.monotonic() - start >= 0.3  # the server's delay, not the SDK's own
    assert reply.text == "hello"
    assert len(server.requests) == 2
    assert client.usage.as_dict() == {"calls": 1, "prompt_tokens": 100, "completion_tokens": 10}


def test_client_gives_up_on_persistent_5xx_and_rejects_4xx_at_once(serve):
    def respond(body, n):
        if "flaky" in message_text(body):
            return 503, {"error": {"message": "busy"}}, {"Retry-After": "0.01"}
        return error(400)

    server = serve(respond)
    client = ChatClient(settings(server, max_retries=3))
    with pytest.raises(RequestFailed, match="gave up after 4 tries"):
        client.chat([{"role": "user", "content": "flaky"}])
    assert len(server.requests) == 4
    with pytest.raises(RequestFailed, match="rejected"):
        client.chat([{"role": "user", "content": "bad request"}])
    assert len(server.requests) == 5
    assert client.usage.calls == 0


def test_client_retries_a_timeout(serve):
    def respond(body, n):
        if n == 1:
            time.sleep(1.0)
        return 200, completion("late but fine"), {}

    server = serve(respond)
    client = ChatClient(settings(server, timeout=0.3))
    assert client.chat([{"role": "user", "content": "hi"}]).text == "late but fine"
    assert len(server.requests) == 2


def test_client_stops_on_bad_key_and_never_shows_it(serve):
    server = serve(lambda body, n: error(401, "invalid api key sk-secret-123"))
    api = settings(server)
    assert "sk-secret-123" not in repr(api)
    with pytest.raises(ApiConfigError, match="AuthenticationError") as raised:
        ChatClient(api).chat([{"role": "user", "content": "hi"}])
    assert len(server.requests) == 1
    assert "sk-secret-123" not in str(raised.value) and "<redacted>" in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_a_server_echoing_the_key_never_gets_it_stored(serve):
    def respond(body, n):
        if "reject" in message_text(body):
            return error(400, "bad request from key sk-secret-123")
        return 200, completion("your key is sk-secret-123"), {}

    client = ChatClient(settings(serve(respond)))
    with pytest.raises(RequestFailed) as raised:
        client.chat([{"role": "user", "content": "reject me"}])
    assert "sk-secret-123" not in str(raised.value) and raised.value.__cause__ is None
    reply = client.chat([{"role": "user", "content": "hi"}])
    assert reply.text == "your key is <redacted>"


# --- reply validation -----------------------------------------------------------------


def pair(category: str, question: str, answer: Any) -> dict[str, Any]:
    return {"category": category, "question": question, "answer": answer}


def test_parse_reply_keeps_valid_pairs_and_says_why_others_go():
    ref = "the top-most ship"
    items = [
        pair("color", "What color is the top-most ship?", "White."),
        pair("object shape", "What shape is the Top-Most ship?", "oval"),
        pair("color", "What color is the ship?", "white"),
        pair("status", "Is the red box around the top-most ship?", "yes"),
        pair("weather", "Is the top-most ship wet?", "no"),
        pair("reasoning", "Why is the top-most ship there?", "it is loaded with many containers"),
        pair("color", "What color is the top-most ship?", "white"),
    ]
    text = "Here you go:\n```json\n" + json.dumps({"qa": items}) + "\n```"
    parsed = parse_reply(text, ref)
    assert parsed.pairs == [
        pair("object color", "What color is the top-most ship?", "white"),
        pair("object shape", "What shape is the Top-Most ship?", "oval"),
    ]
    assert len(parsed.problems) == 5
    assert any("does not name" in p for p in parsed.problems)
    assert any("crop or box" in p for p in parsed.problems)
    assert any("unknown category" in p for p in parsed.problems)
    assert any("short phrase" in p for p in parsed.problems)
    assert any("duplicate" in p for p in parsed.problems)


def test_parse_reply_rejects_non_json_and_accepts_a_bare_list():
    assert parse_reply("I cannot see a ship.", "the only ship").pairs == []
    assert parse_reply('{"answer": 3}', "the only ship").problems == ['reply has no "qa" list']
    bare = json.dumps([pair("color", "What color is the only ship?", 7)])
    assert parse_reply(bare, "the only ship").pairs[0]["answer"] == "7"
    crop_field = json.dumps([pair("background", "What crop grows near the only ship?", "rice")])
    assert parse_reply(crop_field, "the only ship").pairs[0]["answer"] == "rice"


# --- geometry -------------------------------------------------------------------------


def test_context_window_contains_target_and_stays_inside():
    for hbox in [(10, 10, 30, 30), (780, 580, 800, 600), (100, 100, 700, 500)]:
        x0, y0, x1, y1 = context_window(hbox, 600, 800, context=3.0, min_side=256)
        assert 0 <= x0 <= hbox[0] and hbox[2] <= x1 <= 800
        assert 0 <= y0 <= hbox[1] and hbox[3] <= y1 <= 600
    assert context_window((10, 10, 30, 30), 600, 800, context=3.0, min_side=256) == (0, 0, 256, 256)


def test_budget_size_fits_the_pixel_budget_and_never_upscales():
    h, w = budget_size(6000, 8000, 1e6)
    assert h * w <= 1e6 and abs(w / h - 8000 / 6000) < 0.01
    assert budget_size(300, 400, 1e6) == (300, 400)


def test_evaluate_keeps_rising_categories_and_drops_falling_items():
    questions = [Question(f"c{i}", "a.png", "object color", "q?", "red", "t") for i in range(4)]
    questions += [Question(f"s{i}", "a.png", "object shape", "q?", "oval", "t") for i in range(2)]
    predictions = {
        "c0": ["blue", "red"],
        "c1": ["blue", "red"],
        "c2": ["red", "blue"],  # right at low, wrong at high: dropped
        "c3": ["blue", "blue"],
        "s0": ["oval", "oval"],
        "s1": ["box", "box"],
    }
    answers = [
        {"question_id": q, "megapixels": mp, "prediction": p}
        for q, preds in predictions.items()
        for mp, p in zip([0.5, 2.0], preds, strict=True)
    ]
    result = evaluate(questions, answers, [2.0, 0.5])
    assert result.megapixels == [0.5, 2.0]
    assert result.accuracy == {"object color": [0.25, 0.5], "object shape": [0.5, 0.5]}
    assert result.kept_categories == ["object color"]
    assert result.kept_questions == ["c0", "c1", "c3"]
    assert result.pending == 0
    partial = evaluate(questions, answers[:-1], [0.5, 2.0])
    assert partial.pending == 1 and partial.questions["object shape"] == 1


def test_store_survives_a_run_killed_mid_write(tmp_path):
    path = tmp_path / "stage.jsonl"
    path.write_text('{"a": 1}\n{"a": 2')
    assert read_jsonl(path) == [{"a": 1}]
    with JsonlAppender(path) as out:
        out.write({"a": 3})
    assert read_jsonl(path) == [{"a": 1}, {"a": 3}]


# --- the whole pipeline ---------------------------------------------------------------

SHIPS = [
    {"category": "ship", "hbox": [100, 50, 160, 90], "color": "red"},
    {"category": "ship", "hbox": [600, 250, 700, 330], "color": "red"},
    {"category": "ship", "hbox": [50, 450, 110, 490], "color": "red"},
    {"category": "harbor", "hbox": [300, 200, 500, 400]},
    {"category": "dock", "hbox": [520, 420, 560, 470]},
]
DOTA = "gsd:0.5\n20 20 60 20 60 50 20 50 ship 0\n300 200 380 200 380 260 300 260 ship 0\n"
COUNT_WORDS = ("How many", "number of", "amount of", "count of")


def make_dataset(root: Path) -> tuple[Path, Path]:
    images, labels = root / "images", root / "labels"
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 80, (600, 800, 3), dtype=np.uint8)
    for obj in SHIPS:
        x0, y0, x1, y1 = obj["hbox"]
        scene[y0:y1, x0:x1] = (200, 30, 30) if obj["category"] == "ship" else (120, 120, 120)
    Image.fromarray(scene).save(images / "scene1.png")
    (labels / "scene1.json").write_text(json.dumps(SHIPS))
    tifffile.imwrite(images / "scene2.tif", rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
    (labels / "scene2.txt").write_text(DOTA)
    return images, labels


def scripted(first_qa_rate_limited: list[bool]) -> Callable[[dict[str, Any], int], Reply]:
    """QA requests: 429 once, dock -> 500, harbor -> prose, ships -> fenced JSON.

    Answer requests: colour right only from 390 px wide images on, shape never right,
    counts always "3".
    """

    def respond(body: dict[str, Any], n: int) -> Reply:
        text = message_text(body)
        if body["messages"][0]["role"] == "system":
            ref = re.search(r'Name the object exactly as "(.+?)"', text).group(1)
            if not first_qa_rate_limited[0]:
                first_qa_rate_limited[0] = True
                return 429, {"error": {"message": "rate limited"}}, {"Retry-After": "0"}
            if "dock" in ref:
                return error(500, "overloaded")
            if "harbor" in ref:
                return 200, completion("Sure! The harbor looks busy and large."), {}
            pairs = [
                {"category": "color", "question": f"What color is {ref}?", "answer": "Red"},
                {"category": "shape", "question": f"What shape is {ref}?", "answer": "oval"},
                {"category": "status", "question": f"Is the red box on {ref}?", "answer": "yes"},
            ]
            return 200, completion("```json\n" + json.dumps({"qa": pairs}) + "\n```"), {}
        question = text.split("\n")[0]
        if "What color" in question:
            return 200, completion("Red." if sent_image(body).width >= 390 else "green"), {}
        if "What shape" in question:
            return 200, completion("triangular"), {}
        assert any(w in question for w in COUNT_WORDS), question
        return 200, completion("3"), {}

    return respond


def qa_requests(server: FakeChatServer) -> list[dict[str, Any]]:
    return [b for b in server.requests if b["messages"][0]["role"] == "system"]


def test_pipeline_runs_every_stage_records_bad_replies_and_resumes(serve, tmp_path):
    images, labels = make_dataset(tmp_path)
    server = serve(scripted([False]))
    out = tmp_path / "bench"
    config = BuildConfig(
        images=images,
        labels=labels,
        out=out,
        api=settings(server),
        megapixels=(0.01, 0.1, 1.0),
        max_concurrency=2,
    )
    reports = build_benchmark(config)

    # Stage 1: every object has a unique reference here; counts for count questions.
    records = {r["name"]: r for r in read_jsonl(out / "targets.jsonl")}
    assert (records["scene1"]["width"], records["scene1"]["height"]) == (800, 600)
    assert (records["scene2"]["width"], records["scene2"]["height"]) == (400, 300)
    assert records["scene1"]["counts"] == {"dock": 1, "harbor": 1, "ship": 3}
    assert reports["targets"].targets == 7
    refs = {t["reference"] for r in records.values() for t in r["targets"]}
    assert {"the only dock", "the only harbor"} <= refs

    # Stage 2: one PNG per target with the red box around the target.
    crops = read_jsonl(out / "crops.jsonl")
    assert len(crops) == 7
    dock = next(c for c in crops if c["target_id"] == "scene1-5")
    crop = np.asarray(Image.open(out / dock["crop"]))
    x0, y0 = dock["window"][:2]
    red = (crop[..., 0] == 255) & (crop[..., 1] == 0) & (crop[..., 2] == 0)
    ys, xs = np.nonzero(red)
    assert xs.min() < 520 - x0 < 560 - x0 < xs.max() and ys.min() < 420 - y0 < 470 - y0 < ys.max()

    # Stage 3: the 429 was retried, bad replies recorded, failures recorded as such.
    qa = {r["target_id"]: r for r in read_jsonl(out / "qa.jsonl")}
    statuses = sorted(r["status"] for r in qa.values())
    assert statuses == ["bad_reply", "failed"] + ["ok"] * 5
    harbor = next(r for r in qa.values() if r["status"] == "bad_reply")
    assert harbor["reply"].startswith("Sure!") and harbor["problems"]
    failed = next(r for r in qa.values() if r["status"] == "failed")
    assert failed["target_id"] == "scene1-5" and "gave up" in failed["error"]
    ok = next(r for r in qa.values() if r["status"] == "ok")
    assert [p["category"] for p in ok["pairs"]] == ["object color", "object shape"]
    assert ok["pairs"][0]["answer"] == "red" and len(ok["problems"]) == 1
    assert reports["usage"]["prompt_tokens"] == 100 * reports["usage"]["calls"]

    # Stage 4: colour improves with resolution, shape and counts do not.
    quality = json.loads((out / "quality.json").read_text())
    assert quality["accuracy"]["object color"] == [0.0, 0.0, 1.0]
    assert quality["accuracy"]["object shape"] == [0.0, 0.0, 0.0]
    assert quality["accuracy"]["count"] == [0.25, 0.25, 0.25]
    assert quality["kept_categories"] == ["object color"]
    assert (out / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sizes = {sent_image(b).size for b in server.requests if b["messages"][0]["role"] == "user"}
    assert (800, 600) in sizes and all(w * h <= 1e6 for w, h in sizes)

    # Stage 5: only the kept questions, in the official format, loadable by the runner.
    exported = [json.loads(line) for line in (out / "lrs_vqa.jsonl").read_text().splitlines()]
    assert len(exported) == 5
    assert {r["category"] for r in exported} == {"object color"}
    first = exported[0]
    assert first["question_id"] == "LRS_1" and first["ground_truth"] == "red"
    assert first["text"].endswith("\n Answer the question using a single word or phrase.")
    assert first["image_size"] == [800, 600] and len(first["hbox"]) == 4
    assert {item.subset for item in load_lrs_vqa(out / "lrs_vqa.jsonl")} == {"LRS"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["per_category"] == {"object color": 5}
    assert summary["per_size_bin"] == {"<2048": 5}
    assert summary["qa_generation_tokens"]["completion_tokens"] > 0

    # A rerun repeats no paid call: only the failed dock request is tried again.
    before = len(server.requests)
    again = build_benchmark(config)
    new = server.requests[before:]
    assert len(new) == 3 and all("the only dock" in message_text(b) for b in new)
    assert again["targets"].skipped == 2 and again["crops"].skipped == 7
    assert again["qa"].skipped == 6 and again["qa"].failed == 1
    assert (out / "lrs_vqa.jsonl").read_text().splitlines() == [
        json.dumps(r, ensure_ascii=False) for r in exported
    ]


def test_local_answerer_plugs_in_and_failed_answers_are_retried(serve, tmp_path):
    images, labels = make_dataset(tmp_path)
    out = tmp_path / "bench"
    server = serve(scripted([True]))
    build_benchmark(
        BuildConfig(images=images, labels=labels, out=out, api=settings(server)),
        ["targets", "crops", "qa"],
    )
    requests_after_qa = len(server.requests)
    seen: list[tuple[tuple[int, ...], str]] = []

    def local_model(image: np.ndarray, question: str) -> str:
        seen.append((image.shape, question))
        if len(seen) == 1:
            raise RequestFailed("model server restarting")
        return "red" if image.shape[1] >= 390 else "blue"

    first = run_quality(out, images, local_model, megapixels=(0.05, 1.0), max_concurrency=1)
    assert first.pending == 1
    errors = [r for r in read_jsonl(out / "answers.jsonl") if "error" in r]
    assert len(errors) == 1
    calls = len(seen)
    second = run_quality(out, images, local_model, megapixels=(0.05, 1.0), max_concurrency=1)
    assert second.pending == 0 and len(seen) == calls + 1
    assert second.kept_categories == ["object color"]
    assert all(q.endswith("Answer the question using a single word or phrase.") for _, q in seen)
    assert len(server.requests) == requests_after_qa  # no API use by a local answerer


def test_targets_and_crops_need_no_api_and_skip_finished_work(tmp_path):
    images, labels = make_dataset(tmp_path)
    out = tmp_path / "bench"
    assert run_targets(images, labels, out).targets == 7
    assert run_targets(images, labels, out).skipped == 2
    assert run_crops(images, out).written == 7
    (out / "crops" / "scene2-1.png").unlink()
    again = run_crops(images, out)
    assert (again.written, again.skipped) == (1, 6)


def test_build_bench_cli(serve, tmp_path, monkeypatch):
    images, labels = make_dataset(tmp_path)
    out = tmp_path / "bench"
    runner = CliRunner()
    base = ["build-bench", "--images", str(images), "--labels", str(labels), "--out", str(out)]
    no_api = runner.invoke(app, base)
    assert no_api.exit_code != 0 and "--api-base" in no_api.output
    assert runner.invoke(app, [*base, "--stages", "targets,crops"]).exit_code == 0
    assert len(read_jsonl(out / "crops.jsonl")) == 7
    server = serve(scripted([True]))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    args = ["--api-base", server.base_url, "--model", "fake-vl", "--resolutions", "0.01,1"]
    result = runner.invoke(app, [*base, *args, "--max-retries", "0"])
    assert result.exit_code == 0, result.output
    assert "sk-from-env" not in result.output
    assert re.search(r"object color \(n=5\): 0\.00  1\.00  kept", result.output)
    assert (out / "lrs_vqa.jsonl").exists() and (out / "summary.json").exists()
