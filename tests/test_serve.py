"""`lumina serve` on 127.0.0.1 (a free port, a background thread) with the embedded model: the official
`openai` client for images, streaming and chat; raw HTTP for bad input (4xx in OpenAI's error shape, the
server up after); batching proven through the scheduler's public on_batch hook; a full queue, a client
that leaves, a request past its timeout."""

import base64
import io
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from lumina_mgpt.cli import main
from lumina_mgpt.errors import GenerationError
from lumina_mgpt.generation.pipeline import Pipeline
from lumina_mgpt.serve.app import HttpServer, create_app
from lumina_mgpt.serve.scheduler import BatchScheduler

SIZE = "32x32"


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.from_pretrained(device="cpu")


class Served:
    """A running server and what the tests look at: its URL, scheduler and the batches it decoded."""

    def __init__(self, pipe, timeout_s=60.0, before_batch=None, **scheduler_options):
        self.batches = []

        def on_batch(info):
            self.batches.append(info)
            if before_batch is not None:
                before_batch()

        self.scheduler = BatchScheduler(pipe, on_batch=on_batch, **scheduler_options)
        app = create_app(pipe, "embedded", self.scheduler, timeout_s=timeout_s, max_body_bytes=2**20, ui=False)
        self.http = HttpServer(app).start()
        self.url = self.http.url
        self.client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0)

    def wait_queued(self, images):
        deadline = time.monotonic() + 30
        while self.scheduler.queued_images != images:
            assert time.monotonic() < deadline, f"{self.scheduler.queued_images} images queued, expected {images}"
            time.sleep(0.01)

    def post(self, body, timeout=60):
        return httpx.post(f"{self.url}/v1/images/generations", json=body, timeout=timeout)

    def healthy(self):
        return httpx.get(f"{self.url}/health", timeout=10).json()["status"] == "ok"


@pytest.fixture(scope="module")
def served(pipe):
    server = Served(pipe)
    yield server
    server.http.stop()


@pytest.fixture
def small(pipe):
    """A server with room for 2 waiting images and a 2 s timeout."""
    server = Served(pipe, timeout_s=2.0, max_batch=2, max_queue=2)
    yield server
    server.scheduler.resume()
    server.http.stop()


def pixels(b64):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def test_the_openai_client_generates_reproducible_images(served):
    # Image i of a request is the image of seed + i alone. (Whether two seeds draw differently is the
    # trained model's business: it may draw a narrow prompt the same way from any seed.)
    settings = {"seed": 3, "temperature": 1.0}
    result = served.client.images.generate(
        prompt="a circle", n=2, size=SIZE, response_format="b64_json", extra_body=settings
    )
    assert len(result.data) == 2 and [item.seed for item in result.data] == [3, 4]
    first, second = (pixels(item.b64_json) for item in result.data)
    assert first.shape == (32, 32, 3)
    for seed, expected in ((3, first), (4, second)):
        body = {**settings, "seed": seed, "cfg": None}  # a null field takes the default
        alone = served.client.images.generate(prompt="a circle", size=SIZE, extra_body=body)
        np.testing.assert_array_equal(pixels(alone.data[0].b64_json), expected)
    models = served.client.models.list()
    assert [model.id for model in models.data] == ["embedded"]


def with_tasks(pipe: Pipeline, *tasks: str) -> Pipeline:
    """The same model and tokenizers, declaring `tasks`."""
    return Pipeline(pipe.model, pipe.text_tokenizer, pipe.image_tokenizer, pipe.layout, pipe.defaults, tasks=tasks)


def test_a_prompt_the_model_reads_otherwise_comes_back_as_revised_prompt(served):
    slip = served.client.images.generate(prompt="a xircle, thanks", size=SIZE, extra_body={"seed": 5})
    read = served.client.images.generate(prompt="a circle,", size=SIZE, extra_body={"seed": 5})
    assert slip.data[0].revised_prompt == "a circle," and read.data[0].revised_prompt is None
    np.testing.assert_array_equal(pixels(slip.data[0].b64_json), pixels(read.data[0].b64_json))


def test_tasks_a_model_lacks_are_501s_the_client_reports(pipe):
    server = Served(with_tasks(pipe, "text-to-image"))
    try:
        with pytest.raises(openai.APIStatusError) as caught:
            server.client.chat.completions.create(model="embedded", messages=[{"role": "user", "content": "hello"}])
        assert caught.value.status_code == 501
        assert "this model was not trained for 'chat' (its tasks: text-to-image)" in caught.value.message
        scene = io.BytesIO()
        Image.new("RGB", (64, 64), (220, 40, 40)).save(scene, format="PNG")
        files = {"image": ("a.png", scene.getvalue(), "image/png")}
        response = httpx.post(f"{server.url}/v1/images/edits", files=files, data={"prompt": "make it blue"}, timeout=10)
        assert response.status_code == 501 and "this model was not trained for 'edit'" in response.text
    finally:
        server.http.stop()


def test_chat_answers_text_and_images_on_a_model_with_chat(pipe):
    chatty = with_tasks(pipe, "text-to-image", "chat")
    server = Served(chatty)
    try:
        picture = io.BytesIO()
        Image.new("RGB", (32, 32), (220, 40, 40)).save(picture, format="PNG")
        uri = "data:image/png;base64," + base64.b64encode(picture.getvalue()).decode()
        reply = server.client.chat.completions.create(
            model="embedded",
            max_tokens=4,
            seed=1,
            messages=[
                {"role": "system", "content": "answer briefly"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": uri}},
                    ],
                },
            ],
        )
        assert reply.choices[0].message.role == "assistant" and isinstance(reply.choices[0].message.content, str)
        with pytest.raises(openai.BadRequestError, match="must be a data URI"):
            server.client.chat.completions.create(
                model="embedded",
                messages=[
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://example.invalid/cat.png"}}],
                    }
                ],
            )
    finally:
        server.http.stop()


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"prompt": "a red circle", "size": "big"}, 400, "size must be a string 'WIDTHxHEIGHT'"),
        ({"prompt": "a red circle", "size": "65x64"}, 400, "multiples of 16"),
        ({"prompt": "a red circle", "n": 0}, 400, "n must be an integer from 1 to 16"),
        ({"prompt": "a red circle", "n": 10**9}, 400, "n must be an integer from 1 to 16"),
        ({"prompt": "a red circle", "n": "2"}, 400, "n must be an integer"),
        ({"prompt": 5}, 400, "prompt must be non-empty text"),
        ({"n": 1}, 400, "prompt must be non-empty text"),
        ({"prompt": "a red circle", "seed": -1}, 400, "seed must be an integer from 0"),
        ({"prompt": "a red circle", "cfg": "high"}, 400, "cfg must be a finite number"),
        ({"prompt": "a red circle", "temperature": -1}, 400, "temperature must be a finite number >= 0"),
        ({"prompt": "a red circle", "stream": "yes"}, 400, "stream must be true or false"),
        ({"prompt": "a red circle", "response_format": "url"}, 400, "accepted: b64_json"),
        ({"prompt": "a red circle", "colour": "red"}, 400, "unknown field(s) 'colour'"),
        ({"prompt": "a red circle", "model": "dall-e-3"}, 404, "model 'dall-e-3' is not served here"),
        (["a red circle"], 400, "the request body is JSON list"),
    ],
)
def test_bad_input_is_a_4xx_in_the_openai_shape_and_the_server_stays_up(served, body, status, words):
    response = served.post(body)
    assert response.status_code == status
    error = response.json()["error"]
    assert words in error["message"] and "\n" not in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    assert served.healthy()


def test_malformed_json_oversized_uploads_and_unknown_routes_are_refused(served):
    response = httpx.post(f"{served.url}/v1/images/generations", content=b'{"prompt": ', timeout=10)
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    upload = {"image": ("big.png", b"\x89PNG" + b"\0" * (2 * 2**20), "image/png")}
    response = httpx.post(f"{served.url}/v1/images/edits", files=upload, data={"prompt": "make it blue"}, timeout=10)
    assert response.status_code == 413 and "at most 1048576 bytes" in response.json()["error"]["message"]
    response = httpx.get(f"{served.url}/v1/nothing", timeout=10)
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error"
    assert served.healthy()



def test_concurrent_requests_share_one_engine_call_and_equal_their_unbatched_images(served):
    requests = [
        {"prompt": prompt, "seed": seed, "size": SIZE}
        for prompt, seed in [("a red circle", 1), ("two blue squares", 2), ("a green triangle", 3), ("a red circle", 9)]
    ]
    odd_size = {"prompt": "a red circle", "seed": 1, "size": "48x32"}
    served.scheduler.pause()
    with ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(served.post, body) for body in [*requests, odd_size]]
        served.wait_queued(5)
        before = len(served.batches)
        served.scheduler.resume()
        responses = [future.result() for future in futures]
    assert all(response.status_code == 200 for response in responses)
    decoded = served.batches[before:]
    # One engine call for the four 32x32 requests, another for the request of another size.
    assert sorted(batch.images for batch in decoded) == [1, 4]
    batched = [pixels(response.json()["data"][0]["b64_json"]) for response in responses]
    for body, image in zip([*requests, odd_size], batched):
        alone = served.post(body)
        assert served.batches[-1].images == 1
        np.testing.assert_array_equal(pixels(alone.json()["data"][0]["b64_json"]), image)


def test_streaming_sends_the_rows_so_far_then_the_final_image(served):
    events = list(served.client.images.generate(prompt="a blue square", size=SIZE, stream=True, extra_body={"seed": 5}))
    partial = [e for e in events if e.type == "image_generation.partial_image"]
    final = [e for e in events if e.type == "image_generation.completed"]
    assert len(partial) == 3 and len(final) == 1  # 4 rows of codes: a partial after each but the last
    assert [e.partial_image_index for e in partial] == [0, 1, 2]
    last = pixels(final[0].b64_json)
    plain = served.post({"prompt": "a blue square", "size": SIZE, "seed": 5}).json()["data"][0]["b64_json"]
    np.testing.assert_array_equal(pixels(plain), last)
    # The first partial shows the top row drawn and gray below it.
    first = pixels(partial[0].b64_json)
    assert first.shape == last.shape and (first[16:] == 128).all() and not (first[:8] == 128).all()


def test_a_full_queue_answers_429_and_the_waiting_requests_still_finish(small):
    small.scheduler.pause()
    with ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(small.post, {"prompt": "a red circle", "size": SIZE, "seed": s}) for s in (1, 2)]
        small.wait_queued(2)
        refused = small.post({"prompt": "a red circle", "size": SIZE})
        assert refused.status_code == 429 and "the queue is full" in refused.json()["error"]["message"]
        small.scheduler.resume()
        assert [future.result().status_code for future in waiting] == [200, 200]


def test_a_client_that_leaves_is_dropped_before_its_batch(small):
    small.scheduler.pause()
    with pytest.raises(httpx.ReadTimeout):
        small.post({"prompt": "a red circle", "size": SIZE}, timeout=httpx.Timeout(10, read=0.5))
    small.wait_queued(0)  # the server noticed the disconnect and took the request out of the queue
    assert small.scheduler.stats["dropped"] == 1
    small.scheduler.resume()
    assert small.batches == [] and small.healthy()


def test_a_batch_whose_every_client_left_stops_before_it_finishes(pipe):
    started, go_on = threading.Event(), threading.Event()

    def hold():  # the batch has left the queue; hold it until its only client is gone
        started.set()
        assert go_on.wait(30)

    server = Served(pipe, before_batch=hold)
    try:
        with pytest.raises(httpx.ReadTimeout):
            server.post({"prompt": "a red circle", "size": SIZE}, timeout=httpx.Timeout(10, read=0.5))
        assert started.is_set()
        deadline = time.monotonic() + 30
        while server.scheduler.stats["dropped"] != 1:
            assert time.monotonic() < deadline, "the server never noticed that its client left"
            time.sleep(0.01)
        go_on.set()
        while server.scheduler.stats["abandoned"] != 1:
            assert time.monotonic() < deadline, "the batch was not abandoned"
            time.sleep(0.01)
        assert server.scheduler.stats["batches"] == 0 and server.scheduler.stats["images"] == 0
        assert server.post({"prompt": "a red circle", "size": SIZE}).status_code == 200
    finally:
        go_on.set()
        server.http.stop()


def test_a_request_that_fails_its_batch_fails_alone_and_engine_errors_are_500s(pipe):
    class PickyPipeline(Pipeline):
        def generate_codes(self, prompts, *args, **kwargs):
            if "refuse me" in prompts:
                raise GenerationError("the prompt 'refuse me' is refused")
            if "break me" in prompts:
                raise RuntimeError("out of memory")
            return super().generate_codes(prompts, *args, **kwargs)

    picky = PickyPipeline(pipe.model, pipe.text_tokenizer, pipe.image_tokenizer, pipe.layout, pipe.defaults)
    server = Served(picky)
    try:
        server.scheduler.pause()
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(server.post, {"prompt": p, "size": SIZE}) for p in ("a red circle", "refuse me")]
            server.wait_queued(2)
            server.scheduler.resume()
            good, bad = (future.result() for future in futures)
        assert [batch.images for batch in server.batches] == [2, 1, 1]  # together, then each alone
        assert good.status_code == 200
        assert bad.status_code == 400 and bad.json()["error"]["message"] == "the prompt 'refuse me' is refused"
        broken = server.post({"prompt": "break me", "size": SIZE})
        assert broken.status_code == 500 and "RuntimeError: out of memory" in broken.json()["error"]["message"]
        assert server.post({"prompt": "a red circle", "size": SIZE}).status_code == 200
    finally:
        server.http.stop()


def test_a_request_past_its_timeout_is_a_504(small):
    small.scheduler.pause()
    response = small.post({"prompt": "a red circle", "size": SIZE})
    assert response.status_code == 504 and "timeout of 2 s" in response.json()["error"]["message"]
    assert small.scheduler.queued_images == 0
    small.scheduler.resume()
    assert small.post({"prompt": "a red circle", "size": SIZE}).status_code == 200


def test_edits_go_to_the_pipelines_edit_where_the_model_has_it(pipe):
    # The shipped model does not edit; the same weights announced as an editing model take the real path.
    editing = Pipeline(
        pipe.model,
        pipe.text_tokenizer,
        pipe.image_tokenizer,
        pipe.layout,
        pipe.defaults,
        tasks=("text-to-image", "edit"),
    )
    server = Served(editing)
    try:
        picture = Image.new("RGB", (64, 64), (224, 224, 224))
        picture.paste((40, 80, 225), (8, 8, 40, 40))
        upload = io.BytesIO()
        picture.save(upload, format="PNG")
        response = httpx.post(
            f"{server.url}/v1/images/edits",
            timeout=60,
            data={"prompt": "make the blue square red", "seed": "4"},
            files={"image": ("in.png", upload.getvalue(), "image/png")},
        )
        assert response.status_code == 200, response.text
        assert response.json()["data"][0]["seed"] == 4
        expected = editing.edit(picture, "make the blue square red", seed=4)
        np.testing.assert_array_equal(pixels(response.json()["data"][0]["b64_json"]), np.asarray(expected))
        response = httpx.post(
            f"{server.url}/v1/images/edits",
            timeout=30,
            data={"prompt": "mirror it"},
            files={"image": ("in.png", b"not an image", "image/png")},
        )
        assert response.status_code == 400 and "image (12 bytes) is not in an image format PIL knows" in response.text
    finally:
        server.http.stop()


def test_serve_refuses_a_taken_port_and_bad_limits_before_loading(capsys):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert main(["serve", "--max-batch", "8", "--max-queue", "4"]) == 2
    assert "--max-queue must be an integer >= 8" in capsys.readouterr().err
    assert main(["serve", "--timeout", "0"]) == 2
    assert "--timeout must be a number > 0" in capsys.readouterr().err


def test_the_stream_events_are_server_sent_json(served):
    with httpx.stream(
        "POST",
        f"{served.url}/v1/images/generations",
        timeout=60,
        json={"prompt": "a red circle", "size": SIZE, "stream": True, "partial_images": 1},
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    kinds = [json.loads(line.removeprefix("data: "))["type"] for line in lines[:-1]]
    assert kinds == ["image_generation.partial_image", "image_generation.completed"]


def test_serve_arguments_parse_without_the_heavy_imports():
    code = (
        "import sys\n"
        "from lumina_mgpt.cli import build_parser\n"
        "build_parser().parse_args(['serve', '--port', '0'])\n"
        "print(','.join(m for m in ('torch', 'fastapi', 'uvicorn', 'gradio') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
