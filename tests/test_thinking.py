"""Thinking before generation: `lumina generate --think URL` against the project's own `lumina serve` chat
endpoint (a tiny random model folder that lists "chat", served on 127.0.0.1: its answer has no final-prompt
line, so the prompt is drawn as asked, with a warning), against a stdlib HTTP fake that answers well (the
refined prompt is drawn; reasoning and both prompts in the metadata), and against an unreachable URL."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image
from test_tasks_api import tiny_task_pipeline

from lumina_mgpt.cli import main
from lumina_mgpt.errors import GenerationError
from lumina_mgpt.generation.pipeline import Pipeline
from lumina_mgpt.generation.thinking import FINAL_MARKER, SYSTEM_PROMPT, ChatThinker, parse_final_prompt
from lumina_mgpt.serve.app import HttpServer, create_app
from lumina_mgpt.serve.scheduler import BatchScheduler

REQUEST = "Draw me a RED circle, please"
REFINED = "a red circle above a blue square"
SIZE = ["--width", "32", "--height", "32"]


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory, one_thread):
    folder = tmp_path_factory.mktemp("tiny-chat")
    tiny_task_pipeline(tasks=("text-to-image", "chat")).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def served(chat_folder):
    pipe = Pipeline.from_pretrained(chat_folder, device="cpu")
    scheduler = BatchScheduler(pipe)
    server = HttpServer(create_app(pipe, "tiny-chat", scheduler, timeout_s=60.0, ui=False)).start()
    yield server.url
    server.stop()


class _FakeChat(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list] = []  # requests received, reset by the fixture

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        content = f"1. One circle, red.\n2. Add a blue square below it for balance.\n**{FINAL_MARKER}** {REFINED}"
        answer = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(answer.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_chat():
    _FakeChat.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeChat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


def drawn(out) -> tuple[dict, Image.Image]:
    (path,) = list(out.iterdir())
    image = Image.open(path)
    return json.loads(image.text["parameters"]), image


def test_think_url_against_lumina_serve_falls_back_on_an_answer_without_a_final_line(
    served, chat_folder, tmp_path, capsys
):
    out = tmp_path / "out"
    argv = ["generate", REQUEST, "--model", chat_folder, "--think", f"{served}/v1", "--think-max-tokens", "8",
            "--think-model", "tiny-chat", *SIZE, "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"warning: thinking by {served}/v1 failed (the answer has no final line" in err
    meta, _ = drawn(out)
    assert meta["prompt"] == REQUEST and meta["rewritten_prompt"] == REQUEST
    assert meta["thinking"]["by"] == f"{served}/v1" and "no final line" in meta["thinking"]["failed"]


def test_a_well_formed_answer_is_drawn_with_its_reasoning_in_the_metadata(
    chat_folder, fake_chat, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("LUMINA_THINK_API_KEY", "secret-from-env")
    out = tmp_path / "out"
    assert main(["generate", REQUEST, "--model", chat_folder, "--think", fake_chat, *SIZE, "--out", str(out)]) == 0
    assert f"rewrote {REQUEST!r} as {REFINED!r}" in capsys.readouterr().err
    meta, image = drawn(out)
    assert meta["prompt"] == REQUEST and meta["rewritten_prompt"] == REFINED
    assert meta["thinking"] == {
        "by": fake_chat, "reasoning": "1. One circle, red.\n2. Add a blue square below it for balance."
    }  # fmt: skip
    (seen,) = _FakeChat.seen
    assert seen["path"] == "/v1/chat/completions" and seen["auth"] == "Bearer secret-from-env"
    assert seen["body"]["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": REQUEST}
    ]  # fmt: skip
    assert "model" not in seen["body"]
    # The refined prompt is drawn exactly as a plain request for it.
    pipe = Pipeline.from_pretrained(chat_folder, device="cpu")
    (plain,) = pipe.generate(REFINED, width=32, height=32, progress=False)
    np.testing.assert_array_equal(np.asarray(image.convert("RGB")), np.asarray(plain))


def test_an_unreachable_url_falls_back_cleanly(chat_folder, tmp_path, capsys):
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "out"
    url = f"http://127.0.0.1:{port}/v1"
    assert main(["generate", REQUEST, "--model", chat_folder, "--think", url, *SIZE, "--out", str(out)]) == 0
    assert f"warning: thinking by {url} failed" in capsys.readouterr().err
    meta, _ = drawn(out)
    assert meta["rewritten_prompt"] == REQUEST and "did not answer" in meta["thinking"]["failed"]


@pytest.mark.parametrize(
    ("answer", "reasoning", "prompt"),
    [
        (f"step 1\nstep 2\n{FINAL_MARKER} {REFINED}", "step 1\nstep 2", REFINED),
        (f'analysis\n{FINAL_MARKER.lower()} "{REFINED}"\n', "analysis", REFINED),
        (f"{FINAL_MARKER} draft\nmore thought\n### {FINAL_MARKER} {REFINED}", f"{FINAL_MARKER} draft\nmore thought",
         REFINED),
    ],
)  # fmt: skip
def test_the_final_prompt_is_the_last_marker_line(answer, reasoning, prompt):
    assert parse_final_prompt(answer) == (reasoning, prompt)


@pytest.mark.parametrize("answer", ["just a picture of a circle", f"{FINAL_MARKER}   \n", ""])
def test_answers_without_a_final_prompt_are_refused(answer):
    with pytest.raises(GenerationError, match="the answer has no final line 'FINAL PROMPT: <prompt>'"):
        parse_final_prompt(answer)


def test_bad_thinking_options_are_refused_before_the_model_loads(tmp_path, capsys):
    assert main(["generate", "a red circle", "--think", "gpt", "--out", str(tmp_path / "out")]) == 2
    assert "unknown thinker 'gpt'; accepted: 'self'" in capsys.readouterr().err
    tiny_task_pipeline(tasks=("text-to-image",)).save_pretrained(tmp_path / "draw-only")
    argv = ["generate", "a red circle", "--think", "self", "--model", str(tmp_path / "draw-only")]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert "not trained for 'rewrite'" in capsys.readouterr().err
    with pytest.raises(GenerationError, match="thinking timeout must be a number of seconds > 0"):
        ChatThinker("http://127.0.0.1:1/v1", timeout_s=0)
