"""Thinking before generation: a language model analyses the request and writes a refined prompt, which is
drawn instead (Lumina-mGPT 2.0, Figure 6).

`--think self` is the model's own rewrite (`Pipeline.rewrite_plan`, the "rewrite" task). `--think URL` asks any
OpenAI-compatible chat endpoint (`ChatThinker`): a system prompt asks for a step-by-step analysis ending in one
line `FINAL PROMPT: ...`; the reasoning and the final prompt go into the image's metadata. Thinking is an
improvement, never a requirement: an endpoint that fails (unreachable, timeout, HTTP error, an answer
without the final line) leaves the user's prompt to be drawn, with a warning on stderr.

The client is the standard library's urllib: no dependency beyond the package's own.
"""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass

from lumina_mgpt.errors import GenerationError
from lumina_mgpt.generation.checks import check_integer

SELF = "self"
THINK_KEY_ENV = "LUMINA_THINK_API_KEY"
THINK_TIMEOUT_S = 60.0
THINK_MAX_TOKENS = 1024
FINAL_MARKER = "FINAL PROMPT:"
SPECS_ACCEPTED = "'self' (the model rewrites the prompt) or the http:// or https:// URL of an OpenAI-compatible API"
SYSTEM_PROMPT = (
    "You prepare requests for a text-to-image model. Reason step by step about the request: which objects it "
    "names, how many of each, their colors and other attributes, and where each one is relative to the others; "
    "settle anything vague or contradictory. Then write one refined prompt: a single plain sentence that states "
    "every object with its count, color and position, and adds nothing the user did not ask for. End your "
    f"answer with that prompt on its own last line, exactly in this form:\n{FINAL_MARKER} <the refined prompt>"
)
_FINAL_LINE = re.compile(rf"^\W*{re.escape(FINAL_MARKER)}\s*(.*)$", re.IGNORECASE)


def check_think_spec(spec: object) -> str:
    """'self' or an http(s) URL; GenerationError otherwise."""
    if spec == SELF or (isinstance(spec, str) and spec.startswith(("http://", "https://")) and len(spec) > 8):
        return spec
    raise GenerationError(f"unknown thinker {spec!r}; accepted: {SPECS_ACCEPTED}")


def parse_final_prompt(answer: str) -> tuple[str, str]:
    """(reasoning, final prompt) of a thinking answer: the last line `FINAL PROMPT: ...` (case and leading
    markup such as '**' ignored; quotes around the prompt dropped) and everything before it. GenerationError
    when no such line holds a prompt."""
    lines = answer.strip().splitlines()
    for index in range(len(lines) - 1, -1, -1):
        match = _FINAL_LINE.match(lines[index].strip())
        if match:
            prompt = match[1].strip().strip("*").strip().strip("\"'").strip()
            if prompt:
                return "\n".join(lines[:index]).strip(), prompt
    raise GenerationError(f"the answer has no final line '{FINAL_MARKER} <prompt>' (it ends {answer[-80:]!r})")


@dataclass(frozen=True)
class Thought:
    """What thinking made of one request: the prompt to draw (the refined one, or the request itself when
    thinking failed), the reasoning, and why it failed (None when it did not)."""

    by: str
    request: str
    prompt: str
    reasoning: str | None = None
    failure: str | None = None

    def metadata(self) -> dict:
        """The image metadata's "thinking" object."""
        if self.failure is not None:
            return {"by": self.by, "failed": self.failure}
        return {"by": self.by} if self.reasoning is None else {"by": self.by, "reasoning": self.reasoning}


class ChatThinker:
    """Thinking by an OpenAI-compatible chat endpoint. `url` is the API's base (e.g. http://host:8000/v1;
    one ending in /chat/completions is used as it is); `model` is sent when given; `api_key` (default: the
    environment's LUMINA_THINK_API_KEY) goes in an Authorization: Bearer header."""

    def __init__(
        self, url: str, model: str | None = None, api_key: str | None = None, timeout_s: float = THINK_TIMEOUT_S,
        max_tokens: int = THINK_MAX_TOKENS,
    ):  # fmt: skip
        url = check_think_spec(url)
        if url == SELF:
            raise GenerationError("ChatThinker needs an endpoint URL; 'self' thinking is Pipeline.rewrite_plan")
        if not timeout_s > 0:
            raise GenerationError(f"thinking timeout must be a number of seconds > 0, got {timeout_s!r}")
        self.url = url
        base = url.rstrip("/")
        self.endpoint = base if base.endswith("/chat/completions") else f"{base}/chat/completions"
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get(THINK_KEY_ENV)
        self.timeout_s = timeout_s
        self.max_tokens = check_integer("think max_tokens", max_tokens, 1, "tokens the analysis may hold")

    def think(self, request: str) -> Thought:
        """The refined prompt of `request`, or `request` itself with a warning on stderr when the endpoint fails."""
        try:
            reasoning, prompt = parse_final_prompt(self.ask(request))
        except GenerationError as error:
            print(
                f"warning: thinking by {self.url} failed ({error}); drawing the prompt as given: {request!r}",
                file=sys.stderr,
            )
            return Thought(self.url, request, request, failure=str(error))
        return Thought(self.url, request, prompt, reasoning=reasoning)

    def ask(self, request: str) -> str:
        """The endpoint's answer text; GenerationError saying why there is none."""
        body = {
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": request}],
            "max_tokens": self.max_tokens,
        }
        if self.model is not None:
            body["model"] = self.model
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        http_request = urllib.request.Request(self.endpoint, data=json.dumps(body).encode(), headers=headers)
        try:
            with urllib.request.urlopen(http_request, timeout=self.timeout_s) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read()[:200].decode("utf-8", "replace")
            raise GenerationError(f"{self.endpoint} answered HTTP {error.code}: {detail}") from None
        except (TimeoutError, urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise GenerationError(f"{self.endpoint} did not answer within {self.timeout_s:g} s ({reason})") from None
        except ValueError as error:
            raise GenerationError(f"{self.endpoint} answered something that is not JSON ({error})") from None
        try:
            content = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise GenerationError(f"{self.endpoint} answered no choices[0].message.content: {str(answer)[:120]!r}")
        return content
