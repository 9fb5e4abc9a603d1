"""Request bodies of the OpenAI-compatible API, checked into the scheduler's and the pipeline's terms.

Every refusal is an `ApiError` carrying the HTTP status and the OpenAI error fields (message, type,
param, code); the messages are the ones the CLI and the Pipeline give for the same values (the
checks of generation/checks.py), plus the name of the field.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from PIL import Image, UnidentifiedImageError

from lumina_mgpt.errors import LuminaError
from lumina_mgpt.formats import IMAGE_PLACEHOLDER, grid_shape
from lumina_mgpt.generation.checks import (
    MAX_SEED,
    check_image_dimensions,
    check_integer,
    check_seeds,
    check_sjd_window,
)
from lumina_mgpt.generation.pipeline import make_settings
from lumina_mgpt.generation.speculative import DEFAULT_WINDOW
from lumina_mgpt.generation.verifiers import SELF, SELF_CAPTION, load_verifiers
from lumina_mgpt.serve.scheduler import ImageRequest

MAX_PROMPT_CHARACTERS = 4000  # OpenAI's own limit for image prompts
IMAGE_FIELDS = (
    "prompt",
    "model",
    "n",
    "size",
    "response_format",
    "stream",
    "partial_images",
    "user",
    "seed",
    "cfg",
    "temperature",
    "top_k",
    "top_p",
    "cfg_schedule",
    "sjd",
    "best_of",
    "verifier",
)
CHAT_FIELDS = (
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_k",
    "seed",
    "n",
    "stream",
    "user",
)
SIZE_PATTERN = re.compile(r"(\d+)x(\d+)")


class ApiError(Exception):
    """An HTTP error in the OpenAI shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@contextmanager
def field(name: str, fields: tuple[str, ...] = ()) -> Iterator[None]:
    """Turn the LuminaError of checking field `name` (or of one of `fields`, the first one its message names)
    into a 400 that names the field."""
    try:
        yield
    except LuminaError as error:
        text = str(error)
        param = next((f for f in fields if f in text), name)
        message = text if text.startswith(param) else f"{param}: {text}"
        raise ApiError(400, message, param=param, code="invalid_value") from None


def json_object(raw: bytes, fields: tuple[str, ...]) -> dict[str, Any]:
    """The request body as a JSON object holding only `fields`, without its null values (the defaults, as in
    OpenAI's API); 400 otherwise."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, f"the request body is not valid JSON ({error}); send a JSON object", code="invalid_json")
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body is JSON {type(body).__name__}; send a JSON object", code="invalid_json")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise ApiError(
            400,
            f"unknown field(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(fields)}",
            param=unknown[0],
            code="unknown_parameter",
        )
    return {key: value for key, value in body.items() if value is not None}  # null means the default


def check_model(body: Mapping[str, Any], model_id: str) -> None:
    """`model`, when given, must name the served model (404 otherwise, as OpenAI answers)."""
    model = body.get("model")
    if model is not None and model != model_id:
        raise ApiError(
            404,
            f"model {model!r} is not served here; GET /v1/models lists the one that is: {model_id!r}",
            param="model",
            code="model_not_found",
        )


def parse_size(size: object, pipe) -> tuple[int, int]:
    """ "WxH" (or "auto": the model's size) as checked (width, height)."""
    if size is None or size == "auto":
        return pipe.defaults.size
    match = SIZE_PATTERN.fullmatch(size) if isinstance(size, str) else None
    if match is None:
        width, height = pipe.defaults.size
        raise ApiError(
            400,
            f"size must be a string 'WIDTHxHEIGHT' in pixels, such as '{width}x{height}', or 'auto'; got {size!r}",
            param="size",
            code="invalid_value",
        )
    with field("size"):
        return check_image_dimensions(int(match[1]), int(match[2]), pipe.layout)


def parse_seed(value: object, images: int = 1) -> int:
    """The first seed of a request of `images` images (image i uses seed + i, all within 0..2**63-1); a random
    one when absent (answered with the images, to reproduce them)."""
    if value is None:
        return secrets.randbelow(2**31)
    with field("seed"):
        first = check_integer("seed", value, 0, "image i uses seed + i", MAX_SEED)
        return check_seeds(first, images)[0]


def image_request(body: Mapping[str, Any], pipe, max_n: int) -> ImageRequest:
    """A checked `POST /v1/images/generations` body."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ApiError(400, f"prompt must be non-empty text, got {prompt!r}", param="prompt", code="invalid_value")
    if len(prompt) > MAX_PROMPT_CHARACTERS:
        raise ApiError(
            400,
            f"prompt is {len(prompt)} characters long; at most {MAX_PROMPT_CHARACTERS} are accepted",
            param="prompt",
            code="invalid_value",
        )
    if body.get("response_format", "b64_json") != "b64_json":
        raise ApiError(
            400,
            f"response_format {body['response_format']!r} is not supported; accepted: b64_json "
            f"(this server keeps no files to link to)",
            param="response_format",
            code="invalid_value",
        )
    with field("n"):
        n = check_integer("n", body.get("n", 1), 1, "images to generate", max_n)
    width, height = parse_size(body.get("size"), pipe)
    with field("settings", ("cfg_schedule", "temperature", "top_k", "top_p", "cfg")):
        settings = make_settings(
            pipe.defaults,
            cfg=body.get("cfg"),
            top_k=body.get("top_k"),
            top_p=body.get("top_p", 1.0),
            temperature=body.get("temperature"),
            cfg_schedule=body.get("cfg_schedule"),
        )
    sjd = body.get("sjd", False)
    with field("sjd"):
        window = DEFAULT_WINDOW if sjd is True else None if sjd is False else check_sjd_window(sjd)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, f"stream must be true or false, got {stream!r}", param="stream", code="invalid_value")
    partial_rows: tuple[int, ...] = ()
    if stream:
        # A partial image after rows 0 .. rows - 2 at most: after the last row comes the final image.
        last = grid_shape(width, height, pipe.layout)[0] - 2
        with field("partial_images"):
            wanted = check_integer(
                "partial_images",
                body.get("partial_images", last + 1),
                0,
                "partial images sent while decoding",
                last + 1,
            )
        partial_rows = tuple(sorted({round(last * i / max(wanted - 1, 1)) for i in range(wanted)}))
    return ImageRequest(prompt, n, width, height, settings, parse_seed(body.get("seed"), n), window, partial_rows)


def best_of_choice(body: Mapping[str, Any], pipe, max_batch: int) -> tuple[int, str] | None:
    """(best_of, verifier) of a generations body that asks for a choice among candidates, else None. The
    candidates of an image decode in one engine call, so best_of is at most the server's batch size. Only the
    model's own verifiers are served ("self", "self-caption"): python: and http: verifiers would let a request
    import code or make the server call other hosts; they run in-process (`lumina generate --verifier`,
    `Pipeline.generate`)."""
    if "best_of" not in body and "verifier" not in body:
        return None
    with field("best_of"):
        best_of = check_integer("best_of", body.get("best_of", 1), 1, "candidates per image, one kept", max_batch)
    verifier = body.get("verifier", SELF)
    if verifier not in (SELF, SELF_CAPTION):
        raise ApiError(
            400,
            f"verifier {verifier!r} is not served; accepted: 'self' or 'self-caption' (the model's own judgement). "
            f"python: and http: verifiers run in-process only (lumina generate --verifier)",
            param="verifier",
            code="invalid_value",
        )
    with field("verifier"):
        load_verifiers(verifier, pipe)  # the model's tasks and family allow it
    if body.get("stream", False):
        raise ApiError(
            400, "best_of chooses among finished images: it cannot stream; give stream false", param="stream",
            code="invalid_value",
        )  # fmt: skip
    return best_of, verifier


def decode_image(data: bytes, where: str, max_pixels: int) -> Image.Image:
    """Uploaded image bytes as an RGB PIL image; 400 for what PIL cannot read or an oversized picture."""
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > max_pixels:
            raise ApiError(
                400,
                f"{where} is {image.width}x{image.height} pixels; at most {max_pixels} pixels are accepted",
                param=where,
                code="image_too_large",
            )
        return image.convert("RGB")
    except UnidentifiedImageError:
        raise ApiError(
            400,
            f"{where} ({len(data)} bytes) is not in an image format PIL knows; send PNG, JPEG or WebP bytes",
            param=where,
            code="invalid_image",
        ) from None
    except (OSError, Image.DecompressionBombError) as error:
        raise ApiError(
            400,
            f"{where} is not an image PIL can read ({error}); send PNG, JPEG or WebP bytes",
            param=where,
            code="invalid_image",
        ) from None


def data_uri_image(url: object, where: str, max_pixels: int) -> Image.Image:
    """An image_url's `data:image/...;base64,...` URI as an image (this server fetches no URLs)."""
    if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
        shown = url[:60] if isinstance(url, str) else repr(url)
        raise ApiError(
            400,
            f"{where} must be a data URI (data:image/png;base64,...); got {shown!r}: this server fetches no URLs",
            param=where,
            code="invalid_image_url",
        )
    try:
        data = base64.b64decode(url.split(";base64,", 1)[1], validate=True)
    except (binascii.Error, ValueError) as error:
        raise ApiError(400, f"{where} holds invalid base64 ({error})", param=where, code="invalid_image_url") from None
    return decode_image(data, where, max_pixels)


def chat_turns(messages: object, max_pixels: int) -> tuple[list[str], list[Image.Image]]:
    """OpenAI chat messages as the Pipeline's alternating turns (human first and last) and their images.

    System messages are put before the first user turn; consecutive messages of one role are joined;
    an image part becomes the `<|image|>` placeholder where it stands."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(
            400, "messages must be a non-empty list of {role, content} objects", param="messages", code="invalid_value"
        )
    system, turns, roles, images = [], [], [], []
    for number, message in enumerate(messages):
        where = f"messages[{number}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("system", "developer", "user", "assistant"):
            raise ApiError(
                400,
                f"{where}.role must be system, developer, user or assistant, got {role!r}",
                param=where,
                code="invalid_value",
            )
        text = _message_text(message.get("content"), where, images, max_pixels)
        if role in ("system", "developer"):
            system.append(text)
        elif roles and roles[-1] == role:
            turns[-1] += "\n" + text
        else:
            roles.append(role)
            turns.append(text)
    if not roles or roles[0] != "user" or roles[-1] != "user":
        raise ApiError(
            400,
            "the conversation must start and end with a user message (the question to answer)",
            param="messages",
            code="invalid_value",
        )
    if system:
        turns[0] = "\n".join(system + [turns[0]])
    return turns, images


def _message_text(content: object, where: str, images: list[Image.Image], max_pixels: int) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(
            400,
            f"{where}.content must be text or a list of parts, got {type(content).__name__}",
            param=where,
            code="invalid_value",
        )
    pieces = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            pieces.append(part["text"])
        elif kind == "image_url" and isinstance(part.get("image_url"), dict):
            images.append(data_uri_image(part["image_url"].get("url"), f"{where}.content[{index}]", max_pixels))
            pieces.append(IMAGE_PLACEHOLDER)
        else:
            raise ApiError(
                400,
                f"{where}.content[{index}] must be {{type: text, text}} or {{type: image_url, "
                f"image_url: {{url}}}}, got {part!r:.80}",
                param=where,
                code="invalid_value",
            )
    return "".join(pieces)
