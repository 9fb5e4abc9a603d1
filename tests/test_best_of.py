"""Best-of-N with verifiers on a tiny random model with the embedded model's tokenizers: the candidates of an
image decode in one engine call with documented seeds, the verifier's favourite is returned with every score in
its metadata, ranks combine by their mean, bad verifiers are refused clearly, and the self verifier's score is
the yes/no softmax of one forward. A random model learned nothing: these tests check mechanics, not quality."""

from __future__ import annotations

import http.server
import json
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from test_pipeline_api import count_engine_calls
from test_tasks_api import PROJECT_TASKS, tiny_task_pipeline

from lumina_mgpt.errors import GenerationError
from lumina_mgpt.formats import encode_conversation, encode_generation_prompt
from lumina_mgpt.generation.best_of import candidate_seeds, choose
from lumina_mgpt.generation.pipeline import Pipeline
from lumina_mgpt.generation.verifiers import (
    HttpVerifier,
    SelfCaptionVerifier,
    SelfVerifier,
    check_verifier_spec,
    combine_ranks,
    load_verifiers,
    ranks,
)
from lumina_mgpt.shapes.tasks import VQA_TEMPLATES, training_record

SIZE = 32
REDDEST = "python:test_best_of:redness"


def redness(images, prompt):
    """A python: verifier: the mean of red minus the other channels."""
    return [float((np.asarray(image, dtype=np.float64) @ np.array([1.0, -0.5, -0.5])).mean()) for image in images]


@pytest.fixture(scope="module")
def pipe(one_thread):
    return tiny_task_pipeline()


@pytest.fixture
def image_calls(pipe, monkeypatch):
    """The number of prompts of every engine.generate_images call."""
    return count_engine_calls(pipe, monkeypatch)


def plain(pipe, prompt, seeds):
    return pipe.generate([prompt], width=SIZE, height=SIZE, num_images=len(seeds), seed=list(seeds), progress=False)


def test_candidates_decode_in_one_call_and_the_verifiers_favourite_is_returned(pipe, image_calls):
    (chosen,) = pipe.generate(
        "a red circle", width=SIZE, height=SIZE, seed=3, best_of=4, verifier=REDDEST, progress=False
    )
    assert image_calls == [4]  # the four candidates of the image: one engine call
    candidates = plain(pipe, "a red circle", candidate_seeds(3, 4))
    assert candidate_seeds(3, 4) == [12, 13, 14, 15]
    scores = redness(candidates, "a red circle")
    best = int(np.argmax(scores))
    np.testing.assert_array_equal(np.asarray(chosen), np.asarray(candidates[best]))
    meta = json.loads(chosen.info["parameters"])
    assert meta["prompt"] == "a red circle" and meta["seed"] == 12 + best
    record = meta["best_of"]
    assert (record["n"], record["chosen"], record["candidate"], record["verifiers"]) == (4, best, best, [REDDEST])
    assert [row["seed"] for row in record["candidates"]] == [12, 13, 14, 15]
    np.testing.assert_allclose([row["scores"][REDDEST] for row in record["candidates"]], scores)
    assert [row["mean_rank"] for row in record["candidates"]] == ranks(scores)


def test_batches_hold_whole_candidate_groups_and_best_of_one_is_the_plain_image(pipe, image_calls):
    images = pipe.generate(
        ["a", "b", "c"], width=SIZE, height=SIZE, best_of=2, verifier=REDDEST, batch_size=4, progress=False
    )
    assert len(images) == 3 and image_calls == [4, 2]  # two images' candidates, then the third's
    (scored,) = pipe.generate("a", width=SIZE, height=SIZE, seed=5, verifier=REDDEST, progress=False)
    np.testing.assert_array_equal(np.asarray(scored), np.asarray(plain(pipe, "a", [5])[0]))
    assert json.loads(scored.info["parameters"])["best_of"]["n"] == 1


def test_keep_candidates_writes_every_candidate_with_its_scores(pipe, tmp_path, monkeypatch, capsys):
    from lumina_mgpt.cli import main

    monkeypatch.setattr(Pipeline, "from_model_info", classmethod(lambda cls, info, **kwargs: pipe))
    out = tmp_path / "out"
    args = [
        "generate",
        "a red circle",
        "--best-of",
        "3",
        "--verifier",
        REDDEST,
        "--keep-candidates",
        "--width",
        str(SIZE),
        "--height",
        str(SIZE),
        "--seed",
        "2",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert "kept candidate" in capsys.readouterr().err
    names = sorted(path.name for path in out.iterdir())
    assert names == [
        "000-a-red-circle-seed2-candidate0-seed6.png",
        "000-a-red-circle-seed2-candidate1-seed7.png",
        "000-a-red-circle-seed2-candidate2-seed8.png",
        "000-a-red-circle-seed2.png",
    ]
    kept = json.loads(Image.open(out / names[-1]).text["parameters"])["best_of"]
    chosen = Image.open(out / names[kept["chosen"]])
    np.testing.assert_array_equal(np.asarray(chosen), np.asarray(Image.open(out / names[-1])))


def test_mean_rank_combines_verifiers_on_hand_made_scores():
    first, second = [0.9, 0.1, 0.5, 0.7], [10.0, 30.0, 20.0, 40.0]
    assert ranks(first) == [1, 4, 3, 2] and ranks(second) == [4, 2, 3, 1]
    assert combine_ranks([first, second]) == [2.5, 3.0, 3.0, 1.5]
    assert ranks([1.0, 1.0, 0.0]) == [1.5, 1.5, 3.0]  # ties share their mean rank
    images = [Image.new("RGB", (4, 4), (i, 0, 0)) for i in range(4)]
    verifiers = [("a", lambda _images, _prompt: first), ("b", lambda _images, _prompt: second)]
    result = choose(images, "x", [0, 1, 2, 3], verifiers)
    assert result.chosen == 3 and result.image is images[3]
    table = json.loads(images[0].info["parameters"])["best_of"]["candidates"]
    assert [row["mean_rank"] for row in table] == [2.5, 3.0, 3.0, 1.5]
    assert table[1]["scores"] == {"a": 0.1, "b": 30.0}
    named = load_verifiers([lambda _i, _p: first, lambda _i, _p: second, REDDEST])
    assert [name for name, _ in named] == ["<lambda>#1", "<lambda>#2", REDDEST]
    # A tie in mean rank goes to the first candidate (the lowest seed).
    assert choose(images[:2], "x", [0, 1], [("c", lambda _i, _p: [2.0, 2.0])]).chosen == 0


@pytest.mark.parametrize(("spec", "message"), [
    ("clip", "unknown verifier 'clip'; accepted: 'self', 'self-caption', 'python:module:function' or 'http:URL'"),
    ("python:nofunction", "must name a callable as python:module:function"),
    ("http:ftp://host/score", "must be http: followed by an http:// or https:// URL"),
    ("python:no_such_module_xyz:score", "cannot import module 'no_such_module_xyz'"),
    ("python:json:no_such_function", "module 'json' has no callable 'no_such_function'"),
])  # fmt: skip
def test_bad_verifier_specs_are_refused(spec, message):
    with pytest.raises(GenerationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_verifiers(spec)


def test_bad_verifier_answers_and_requests_are_refused_before_compute(pipe, image_calls):
    images = [Image.new("RGB", (4, 4))] * 3
    with pytest.raises(GenerationError, match="verifier short returned 2 scores for 3 images"):
        choose(images, "x", [0, 1, 2], [("short", lambda _i, _p: [1.0, 2.0])])
    with pytest.raises(GenerationError, match="not a finite number"):
        choose(images, "x", [0, 1, 2], [("nan", lambda _i, _p: [1.0, float("nan"), 0.0])])
    with pytest.raises(GenerationError, match="best-of-N needs at least one verifier"):
        pipe.generate("a", best_of=2, progress=False)
    with pytest.raises(GenerationError, match="best_of must be an integer from 1 to 256"):
        pipe.generate("a", best_of=0, verifier=REDDEST, progress=False)
    with pytest.raises(GenerationError, match="with best_of 4 needs candidate seeds up to"):
        pipe.generate("a", seed=2**62, best_of=4, verifier=REDDEST, progress=False)
    assert check_verifier_spec("http:https://scores.example/v1") == "http:https://scores.example/v1"
    assert image_calls == []


class _ScoreHandler(http.server.BaseHTTPRequestHandler):
    delay_s = 0.0

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(self.delay_s)
        answer = json.dumps({"scores": [float(len(image)) for image in body["images"]]}).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(answer)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting: the timeout test

    def log_message(self, *args):
        pass


@pytest.fixture
def score_server():
    servers = []

    def start(delay_s):
        handler = type("Handler", (_ScoreHandler,), {"delay_s": delay_s})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/score"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_http_verifier_scores_and_times_out_clearly(score_server):
    images = [Image.new("RGB", (8, 8), (255, 0, 0)), Image.effect_noise((8, 8), 60).convert("RGB")]
    scores = HttpVerifier(score_server(0.0))(images, "x")
    assert len(scores) == 2 and scores[1] > scores[0]  # noise compresses worse: a longer PNG
    slow = HttpVerifier(score_server(2.0), timeout_s=0.2)
    with pytest.raises(GenerationError, match=r"verifier http:http://127\.0\.0\.1:\d+/score did not answer .*timeout"):
        slow(images, "x")


def hand_score(pipe: Pipeline, image: Image.Image, prompt: str) -> float:
    """P(yes) / (P(yes) + P(no)) from a full forward over the training-style VQA prompt, written out here."""
    question = VQA_TEMPLATES["yes_no"][0].format(caption=prompt)
    grid = pipe.image_tokenizer.encode([image.convert("RGB")])[0].numpy()  # each image at its own size
    ids = encode_generation_prompt([f"{question} <|image|>"], [grid], pipe.text_tokenizer, pipe.layout)
    with torch.no_grad():
        logits = pipe.model(torch.as_tensor(ids)[None])[0, -1]
    yes, no = pipe.text_tokenizer.encode("yes")[0], pipe.text_tokenizer.encode("no")[0]
    return torch.softmax(logits[[yes, no]], dim=-1)[0].item()


def test_self_verifier_is_the_yes_no_softmax_of_one_batched_forward(pipe, monkeypatch):
    images = [training_record("vqa", 3, i).images[0] for i in range(3)]
    images.append(Image.effect_noise((80, 48), 50).convert("RGB"))  # another of the model's sizes, read as it is
    prompt = "a red circle above a blue square."
    verifier = SelfVerifier(pipe)
    calls = count_engine_calls(pipe, monkeypatch, "generate_text")
    batched = verifier(images, prompt)
    assert calls == [4]
    expected = [hand_score(pipe, image, "a red circle above a blue square") for image in images]
    np.testing.assert_allclose(batched, expected, rtol=1e-4, atol=1e-6)
    alone = [verifier([image], prompt)[0] for image in images]
    np.testing.assert_allclose(batched, alone, rtol=1e-4, atol=1e-6)
    assert all(0.0 < score < 1.0 for score in batched)


def test_self_verifier_asks_the_verify_tasks_training_question(pipe):
    """The verify records (what trains the model's yes/no judgement) and the verifier's prompt agree token
    for token, up to the answer."""
    verifier = SelfVerifier(pipe)
    records = (training_record("verify", 3, index) for index in range(200))
    record = next(r for r in records if r.turns[0].startswith("does this image show: "))
    caption = record.turns[0].removeprefix("does this image show: ").removesuffix("? <|image|>")
    (ours,) = verifier.prompt_ids(record.images, caption)
    grids = [pipe.image_tokenizer.encode(list(record.images))[0].numpy()]
    trained = encode_conversation(list(record.turns), grids, pipe.text_tokenizer, pipe.layout, "response").ids
    assert list(ours) == trained[: len(ours)].tolist() and trained[len(ours)] in (verifier.yes_id, verifier.no_id)


def scripted_text_answers(pipe, monkeypatch, rewrite: str, captions: list[str]) -> list[list[str]]:
    """Make the pipe's text tasks answer `rewrite` to rewriting and `captions` in turn to captioning; returns
    the tasks of every run_text_tasks call."""
    calls = []

    def answer(requests, **_options):
        calls.append([request.task for request in requests])
        pending = iter(captions)
        return [rewrite if request.task == "rewrite" else next(pending) for request in requests]

    monkeypatch.setattr(pipe, "run_text_tasks", answer)
    return calls


def test_self_caption_verifier_checks_each_caption_against_the_rewritten_prompt_then_adds_vqascore(pipe, monkeypatch):
    images = [training_record("vqa", 3, i).images[0] for i in range(4)]
    prompt = "please draw a square together with a purple circle"  # not a canonical caption: it is rewritten
    vqa_scores = SelfVerifier(pipe)(images, prompt)
    captions = [
        "a green square to the left of a purple circle",  # shows it
        "a purple square to the left of a green circle",  # the color on the wrong object
        "three purple circles",  # no square
        "a yellow square above a purple circle",  # shows it
    ]
    calls = scripted_text_answers(pipe, monkeypatch, "a square and a purple circle", captions)
    scores = SelfCaptionVerifier(pipe)(images, prompt)
    np.testing.assert_allclose(scores, np.add([1, 0, 0, 1], vqa_scores), rtol=1e-5)
    assert calls == [["rewrite"], ["caption"] * 4]  # one rewrite, every caption in one call
    # A canonical prompt is read as it is; a rewrite that is no caption leaves VQAScore alone.
    calls.clear()
    SelfCaptionVerifier(pipe)(images, "a square and a purple circle")
    assert calls == [["caption"] * 4]
    unreadable = scripted_text_answers(pipe, monkeypatch, "something else entirely", captions)
    np.testing.assert_allclose(SelfCaptionVerifier(pipe)(images, prompt), vqa_scores, rtol=1e-5)
    assert unreadable == [["rewrite"]]


def test_self_caption_verifier_needs_a_shapes_world_model_that_captions_and_rewrites(pipe, monkeypatch):
    for tasks, missing in [(("text-to-image", "vqa", "rewrite"), "caption"), (("text-to-image", "vqa", "caption"), "rewrite")]:
        declared = Pipeline(pipe.model, pipe.text_tokenizer, pipe.image_tokenizer, pipe.layout, pipe.defaults, tasks)
        with pytest.raises(GenerationError, match=f"not trained for '{missing}'"):
            declared.generate("a", best_of=2, verifier="self-caption", progress=False)
    monkeypatch.setattr("lumina_mgpt.generation.tasks.prompt_family", lambda layout: "lumina-mgpt")
    with pytest.raises(GenerationError, match="reads captions of the shapes task world; this lumina-mgpt model"):
        SelfCaptionVerifier(pipe)


def test_self_verifier_needs_a_model_that_answers_questions(pipe):
    drawing_only = Pipeline(
        pipe.model, pipe.text_tokenizer, pipe.image_tokenizer, pipe.layout, pipe.defaults, tasks=("text-to-image",)
    )
    with pytest.raises(GenerationError, match="not trained for 'vqa'"):
        drawing_only.generate("a", best_of=2, verifier="self", progress=False)
    assert "vqa" in PROJECT_TASKS


def test_eval_shapes_and_tasks_choose_among_candidates(pipe, image_calls, monkeypatch, tmp_path, capsys):
    from lumina_mgpt.cli import main

    monkeypatch.setattr(Pipeline, "from_model_info", classmethod(lambda cls, info, **kwargs: pipe))
    assert main(["eval", "shapes", "--limit", "6", "--best-of", "2", "--verifier", REDDEST]) == 0
    assert f"choice: best of 2 by {REDDEST} (mean rank); thinking: none" in capsys.readouterr().out
    assert sum(image_calls) == 12 and all(calls % 2 == 0 for calls in image_calls)  # 6 prompts, 2 candidates each
    image_calls.clear()
    report = tmp_path / "tasks.json"
    argv = ["eval", "tasks", "--task", "text_to_image", "--limit", "2", "--best-of", "2", "--verifier", "self",
            "--verifier", REDDEST, "--think", "self", "--out", str(report)]  # fmt: skip
    from lumina_mgpt import model_folder

    embedded = model_folder.read_model_info(None)  # announced as the multi-task model the tiny pipe stands for
    monkeypatch.setattr(model_folder, "read_model_info", lambda *args: replace(embedded, tasks=PROJECT_TASKS))
    assert main(argv) == 0
    assert f"text-to-image choice: best of 2 by self + {REDDEST}" in capsys.readouterr().out
    assert sum(image_calls) == 4
    header = json.loads(report.read_text())
    assert (header["best_of"], header["verifiers"], header["think"]) == (2, ["self", REDDEST], "self")


def test_eval_refuses_quality_options_on_ground_truth(capsys):
    from lumina_mgpt.cli import main

    assert main(["eval", "shapes", "--ground-truth", "--best-of", "2", "--verifier", REDDEST]) == 2
    assert "--best-of, --verifier and --think need a model" in capsys.readouterr().err


def test_the_server_answers_best_of_with_the_pipelines_choice_and_its_record(pipe):
    import base64
    import io

    import httpx

    from lumina_mgpt.serve.app import HttpServer, create_app
    from lumina_mgpt.serve.scheduler import BatchScheduler

    server = HttpServer(create_app(pipe, "tiny", BatchScheduler(pipe, max_batch=4), timeout_s=60.0, ui=False)).start()
    url = f"{server.url}/v1/images/generations"
    try:
        body = {"prompt": "a red circle", "n": 2, "size": f"{SIZE}x{SIZE}", "seed": 7, "best_of": 3}
        answer = httpx.post(url, json={**body, "verifier": "self"}, timeout=60)
        assert answer.status_code == 200, answer.text
        data = answer.json()["data"]
        expected = pipe.generate("a red circle", width=SIZE, height=SIZE, num_images=2, seed=7, best_of=3,
                                 verifier="self", progress=False)  # fmt: skip
        for item, image in zip(data, expected):
            served = Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).convert("RGB")
            np.testing.assert_array_equal(np.asarray(served), np.asarray(image))
            assert item["best_of"] == json.loads(image.info["parameters"])["best_of"]
        assert [item["seed"] for item in data] == [7, 8]
        assert [row["seed"] for row in data[1]["best_of"]["candidates"]] == [24, 25, 26]
        # The model's other own verifier is served too; "a red circle" is a canonical caption, so it is not rewritten.
        captioned = httpx.post(url, json={**body, "n": 1, "verifier": "self-caption"}, timeout=60)
        assert captioned.status_code == 200, captioned.text
        (choice,) = [item["best_of"] for item in captioned.json()["data"]]
        expected = pipe.generate("a red circle", width=SIZE, height=SIZE, seed=7, best_of=3, verifier="self-caption",
                                 progress=False)[0]  # fmt: skip
        assert choice == json.loads(expected.info["parameters"])["best_of"] and choice["verifiers"] == ["self-caption"]
        for extra, message in [
            ({"verifier": REDDEST}, f"verifier {REDDEST!r} is not served; accepted: 'self' or 'self-caption'"),
            ({"best_of": 5}, "best_of must be an integer from 1 to 4"),
            ({"stream": True}, "best_of chooses among finished images: it cannot stream"),
        ]:
            refused = httpx.post(url, json={**body, **extra}, timeout=60)
            assert refused.status_code == 400 and message in refused.json()["error"]["message"]
    finally:
        server.stop()


def _bench_best_of():
    """benchmarks/bench_best_of.py, which reports the verifier's ROC AUC (a script, not a package module)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_best_of.py"
    spec = importlib.util.spec_from_file_location("bench_best_of", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmarks_roc_auc_counts_pairs_and_its_interval_resamples_prompts():
    bench = _bench_best_of()
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 12, size=300) / 11  # many ties
    labels = rng.random(300) < 0.5 + 0.4 * (scores - 0.5)
    positives, negatives = scores[labels], scores[~labels]
    pairs = (positives[:, None] > negatives[None, :]) + 0.5 * (positives[:, None] == negatives[None, :])
    auc = bench.roc_auc(scores.tolist(), labels.tolist())
    assert auc == pytest.approx(pairs.mean(), abs=1e-12)
    assert bench.roc_auc([0.1, 0.9, 0.2], [False, True, False]) == 1.0
    assert bench.roc_auc([0.9, 0.1], [False, True]) == 0.0
    prompt_of = np.repeat(np.arange(30), 10)
    low, high = bench.roc_auc_interval(scores, labels, prompt_of, resamples=400)
    assert 0 <= low < auc < high <= 1 and high - low < 0.3
    # Copies of the same drawings do not narrow an interval that resamples whole prompts.
    copied = bench.roc_auc_interval(np.tile(scores, 4), np.tile(labels, 4), np.tile(prompt_of, 4), resamples=400)
    assert copied == pytest.approx((low, high), abs=0.02)
