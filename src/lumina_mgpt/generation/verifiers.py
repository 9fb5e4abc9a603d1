"""Verifiers for best-of-N sampling: each scores candidate images of one prompt, higher is better.

A verifier is any callable `(images: list[PIL.Image], prompt: str) -> one number per image`. Named by a spec:
- "self": the model's own judgement, VQAScore-style (`SelfVerifier`): the probability that it answers
  "yes" to the task world's yes/no question about the prompt, from the logits of one batched forward;
- "self-caption" (models of the shapes task world): the model captions each image, and the caption is
  checked against the prompt as the model rewrites it (`SelfCaptionVerifier`), VQAScore breaking ties;
- "python:module:function": any importable callable, e.g. a CLIP or aesthetic scorer;
- "http:URL": a scoring service (`HttpVerifier`): POST {"prompt", "images": [base64 PNG]} ->
  {"scores": [...]}.

Several verifiers are combined by mean rank (`combine_ranks`), as the Lumina-mGPT 2.0 paper does: their
scales differ, their orderings compare. Nothing here imports torch at module level: the CLIs check specs
before loading a model.
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import math
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

from PIL import Image

from lumina_mgpt.errors import GenerationError
from lumina_mgpt.model_folder import CAPTION, CHAT, REWRITE, VQA, require_task

SELF = "self"
SELF_CAPTION = "self-caption"
PYTHON_PREFIX = "python:"
HTTP_PREFIX = "http:"
SPECS_ACCEPTED = "'self', 'self-caption', 'python:module:function' or 'http:URL' (an http:// or https:// URL)"
HTTP_TIMEOUT_S = 60.0
# The yes/no question of the shapes task world (shapes.tasks.VQA_TEMPLATES["yes_no"][0]) is the project
# models' question; official chat models get VQAScore's own wording and answers.
OFFICIAL_QUESTION = 'Does this figure show "{prompt}"? Please answer yes or no.'
OFFICIAL_ANSWERS = ("Yes", "No")
PROJECT_ANSWERS = ("yes", "no")

Verifier = Callable[[list[Image.Image], str], Sequence[float]]
# What the model's own verifiers need it trained for: each entry a task, or tasks that also do it.
OWN_VERIFIER_TASKS = {SELF: [(VQA, CHAT)], SELF_CAPTION: [(CAPTION,), (REWRITE,), (VQA, CHAT)]}


def check_verifier_spec(spec: object) -> str:
    """A verifier spec, checked for its form (not imported or contacted); GenerationError otherwise."""
    if not isinstance(spec, str):
        raise GenerationError(f"a verifier spec must be a string, {SPECS_ACCEPTED}; got {type(spec).__name__}")
    if spec in (SELF, SELF_CAPTION):
        return spec
    if spec.startswith(PYTHON_PREFIX):
        module, _, function = spec[len(PYTHON_PREFIX) :].rpartition(":")
        if module and function.isidentifier():
            return spec
        raise GenerationError(
            f"verifier {spec!r} must name a callable as python:module:function (e.g. "
            f"python:my_scorers:clip_score); accepted: {SPECS_ACCEPTED}"
        )
    if spec.startswith(HTTP_PREFIX):
        url = spec[len(HTTP_PREFIX) :]
        if url.startswith(("http://", "https://")) and len(url) > len("https://"):
            return spec
        raise GenerationError(
            f"verifier {spec!r} must be http: followed by an http:// or https:// URL; accepted: {SPECS_ACCEPTED}"
        )
    raise GenerationError(f"unknown verifier {spec!r}; accepted: {SPECS_ACCEPTED}")


def require_verifier_tasks(spec: str, tasks: Sequence[str]) -> None:
    """GenerationError naming the verifier unless a model of `tasks` can run verifier `spec` (cheap: the
    CLIs run it before loading the model; python: and http: verifiers need no task)."""
    for needed in OWN_VERIFIER_TASKS.get(spec, ()):
        try:
            require_task(tasks, *needed)
        except GenerationError as error:
            raise GenerationError(f"verifier {spec!r}: {error}") from None


def load_python_verifier(spec: str) -> Verifier:
    """The callable a python:module:function spec names (imported now); GenerationError saying what failed."""
    module_name, _, function_name = check_verifier_spec(spec)[len(PYTHON_PREFIX) :].rpartition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise GenerationError(
            f"verifier {spec!r}: cannot import module {module_name!r} ({error}); put it on PYTHONPATH or install it"
        ) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise GenerationError(
            f"verifier {spec!r}: module {module_name!r} has no callable {function_name!r}; "
            f"accepted: a function (images, prompt) -> scores"
        )
    return function


def load_verifiers(verifier: object, pipe=None) -> list[tuple[str, Verifier]]:
    """(name, verifier) of each verifier asked: a spec, a callable, or a non-empty list of them. "self"
    needs `pipe` (a model trained for "vqa" or "chat"), "self-caption" a model of the shapes task world.
    GenerationError for anything else."""
    asked = list(verifier) if isinstance(verifier, (list, tuple)) else [verifier]
    if not asked or verifier is None:
        raise GenerationError(
            f"best-of-N needs at least one verifier: {SPECS_ACCEPTED}, or a callable (images, prompt) -> scores"
        )
    loaded = []
    for item in asked:
        if callable(item) and not isinstance(item, str):
            loaded.append((getattr(item, "__name__", type(item).__name__), item))
            continue
        spec = check_verifier_spec(item)
        if spec == SELF:
            loaded.append((spec, SelfVerifier(pipe)))
        elif spec == SELF_CAPTION:
            loaded.append((spec, SelfCaptionVerifier(pipe)))
        elif spec.startswith(PYTHON_PREFIX):
            loaded.append((spec, load_python_verifier(spec)))
        else:
            loaded.append((spec, HttpVerifier(spec[len(HTTP_PREFIX) :])))
    # Scores are recorded by name: two verifiers of one name (two lambdas) get numbered ones.
    names = [name for name, _ in loaded]
    return [
        (name if names.count(name) == 1 else f"{name}#{names[: index + 1].count(name)}", verify)
        for index, (name, verify) in enumerate(loaded)
    ]


def check_scores(name: str, scores: object, count: int) -> list[float]:
    """A verifier's answer as `count` finite floats; GenerationError naming the verifier otherwise."""
    try:
        values = [float(s) for s in scores]
    except (TypeError, ValueError):
        raise GenerationError(
            f"verifier {name} returned {type(scores).__name__} {str(scores)[:80]!r}; "
            f"accepted: a sequence of {count} numbers, one per image"
        ) from None
    if len(values) != count:
        raise GenerationError(
            f"verifier {name} returned {len(values)} scores for {count} images; accepted: one score per image, in order"
        )
    if not all(math.isfinite(v) for v in values):
        raise GenerationError(
            f"verifier {name} returned a score that is not a finite number ({values}); "
            f"accepted: finite numbers, higher is better"
        )
    return values


def ranks(scores: Sequence[float]) -> list[float]:
    """Rank of each score, 1 for the highest; tied scores share the mean of their ranks."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    result = [0.0] * len(scores)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        for position in range(start, end + 1):
            result[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return result


def combine_ranks(score_lists: Sequence[Sequence[float]]) -> list[float]:
    """Each candidate's mean rank over the verifiers (1 is best everywhere); lower is better."""
    per_verifier = [ranks(scores) for scores in score_lists]
    return [sum(column) / len(column) for column in zip(*per_verifier)]


def best_index(mean_ranks: Sequence[float]) -> int:
    """The candidate with the lowest mean rank; the first of them on a tie (lowest seed)."""
    return min(range(len(mean_ranks)), key=lambda i: mean_ranks[i])


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class HttpVerifier:
    """A scoring service: POST JSON {"prompt", "images": [base64 PNG, ...]} to `url`, answer JSON
    {"scores": [one number per image]}. Failures (unreachable, timeout, HTTP error, bad JSON) raise
    GenerationError: a best-of-N run cannot choose without its verifier."""

    def __init__(self, url: str, timeout_s: float = HTTP_TIMEOUT_S):
        self.url, self.timeout_s = url, timeout_s

    def __call__(self, images: list[Image.Image], prompt: str) -> list[float]:
        body = json.dumps({"prompt": prompt, "images": [png_base64(image) for image in images]}).encode()
        request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        where = f"verifier http:{self.url}"
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise GenerationError(
                f'{where} answered HTTP {error.code} {error.reason}; accepted: 200 with {{"scores": [...]}}'
            ) from None
        except (TimeoutError, urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise GenerationError(
                f"{where} did not answer ({reason}; timeout {self.timeout_s:g} s); check that "
                f"the service runs and is reachable"
            ) from None
        except ValueError as error:
            raise GenerationError(
                f'{where} answered something that is not JSON ({error}); accepted: {{"scores": [...]}}'
            ) from None
        if not isinstance(answer, dict) or "scores" not in answer:
            raise GenerationError(
                f'{where} answered {str(answer)[:80]!r}; accepted: a JSON object {{"scores": [one number per image]}}'
            )
        return check_scores(where, answer["scores"], len(images))


class SelfVerifier:
    """The model's own judgement (VQAScore): P("yes") / (P("yes") + P("no")) for the question whether each
    image shows the prompt, read from the logits of the answer's first token after ONE batched prefill of
    (question, image) prompts; nothing is sampled. Project models are asked their training question
    (shapes.tasks.VQA_TEMPLATES["yes_no"][0]) and answer "yes" / "no"; official chat models get VQAScore's
    question and "Yes" / "No". When an answer spans several text pieces, its first piece stands for it.
    Needs a model trained for "vqa" or "chat"."""

    def __init__(self, pipe):
        from lumina_mgpt.generation.tasks import PROJECT, prompt_family

        if pipe is None:
            raise GenerationError("the 'self' verifier needs the pipeline of the model that judges")
        require_verifier_tasks(SELF, pipe.tasks)
        self.pipe = pipe
        self.family = prompt_family(pipe.layout)
        answers = PROJECT_ANSWERS if self.family == PROJECT else OFFICIAL_ANSWERS
        first_pieces = [pipe.text_tokenizer.encode(answer)[:1] for answer in answers]
        if any(not piece for piece in first_pieces) or first_pieces[0] == first_pieces[1]:
            raise GenerationError(
                f"the 'self' verifier needs answers {answers} whose first text pieces differ; this "
                f"model's tokenizer gives {first_pieces}"
            )
        self.yes_id, self.no_id = first_pieces[0][0], first_pieces[1][0]

    def question(self, prompt: str) -> str:
        """The yes/no question asked about `prompt` (closing punctuation dropped: the template adds its '?')."""
        from lumina_mgpt.generation.tasks import PROJECT
        from lumina_mgpt.shapes.tasks import VQA_TEMPLATES, quoted_prompt

        text = quoted_prompt(prompt)
        if self.family == PROJECT:
            return VQA_TEMPLATES["yes_no"][0].format(caption=text)
        return OFFICIAL_QUESTION.format(prompt=text)

    def prompt_ids(self, images: Sequence[Image.Image], prompt: str) -> list:
        """The prompt ids of each (question, image) pair, ending with the separator the answer follows."""
        from lumina_mgpt.formats import encode_generation_prompt
        from lumina_mgpt.generation.tasks import TaskRequest, text_task_turn, understanding_codes

        pipe = self.pipe
        # one at a time: the candidates of a prompt share a size, images of several prompts need not
        grids = [understanding_codes(pipe, image) for image in images]
        question = self.question(pipe.read(prompt))
        return [
            encode_generation_prompt(
                [text_task_turn(TaskRequest(VQA, question, image), self.family)], [grid],
                pipe.text_tokenizer, pipe.layout,
            )
            for image, grid in zip(images, grids)
        ]  # fmt: skip

    def __call__(self, images: list[Image.Image], prompt: str) -> list[float]:
        import torch

        from lumina_mgpt.generation.engine import GenerationSettings
        from lumina_mgpt.generation.sampling import SamplingSettings

        prompts = self.prompt_ids(images, prompt)
        first_logits = []

        def keep_prefill(output) -> None:
            if not first_logits:
                first_logits.append(output.logits[:, -1].float())

        # One new token: the prefill alone runs, and its logits are read; the greedy pick is discarded.
        greedy = GenerationSettings(cfg=1.0, text=SamplingSettings(temperature=0.0))
        self.pipe.engine.generate_text(
            prompts, greedy, [0] * len(prompts), max_new_tokens=1, image_size=self.pipe.defaults.size,
            progress=False, on_step=keep_prefill,
        )  # fmt: skip
        pair = first_logits[0][:, [self.yes_id, self.no_id]]
        return torch.softmax(pair, dim=-1)[:, 0].tolist()


class SelfCaptionVerifier:
    """The model's own judgement through its captions, for models of the shapes task world (project family,
    trained for caption, rewrite and vqa): each image scores 1 when the model's caption of it describes a
    scene that shows what the prompt asks (`shapes.captions.caption_shows`: objects, counts, colors asked and
    the relation the caption states), else 0, plus its "self" VQAScore, which orders candidates the caption
    check cannot tell apart. What the prompt asks is read from the prompt when it is a canonical caption,
    else from the model's own rewrite of it (greedy); when neither parses, VQAScore alone scores.

    On 8 drawings of each of the 553 ShapesEval prompts by the embedded model, labelled by the ShapesEval
    analyzer (which no verifier sees), this ranks with ROC AUC 0.970 / 0.970 (two seeds) against 0.968 /
    0.963 for VQAScore alone (benchmarks/RESULTS.md; before the rejudge-again stage taught VQAScore two
    objects, 0.971 / 0.964 against 0.951 / 0.946), its gain on two objects and relations. It also
    rejects right drawings whose caption misreads them or that the task world has no caption for (three
    circles of three colors: a caption names one color per group)."""

    def __init__(self, pipe):
        from lumina_mgpt.generation.tasks import PROJECT, prompt_family

        if pipe is None:
            raise GenerationError("the 'self-caption' verifier needs the pipeline of the model that judges")
        require_verifier_tasks(SELF_CAPTION, pipe.tasks)
        family = prompt_family(pipe.layout)
        if family != PROJECT:
            raise GenerationError(
                f"the 'self-caption' verifier reads captions of the shapes task world; this {family} model "
                f"captions in free text: use 'self'"
            )
        self.pipe = pipe
        self.vqa_score = SelfVerifier(pipe)

    def asked(self, prompt: str):
        """The spec `prompt` asks for: the prompt read as a canonical caption, else the model's rewrite of it;
        None when neither is one."""
        from lumina_mgpt.shapes.captions import parse_caption

        return parse_caption(self.pipe.read(prompt)) or parse_caption(self.pipe.rewrite(prompt))

    def __call__(self, images: list[Image.Image], prompt: str) -> list[float]:
        from lumina_mgpt.generation.tasks import TaskRequest
        from lumina_mgpt.shapes.captions import caption_shows, parse_caption

        vqa_scores = self.vqa_score(images, prompt)
        asked = self.asked(prompt)
        if asked is None:
            return vqa_scores
        requests = [TaskRequest(CAPTION, "", image) for image in images]
        captions = self.pipe.run_text_tasks(requests, batch_size=max(1, len(requests)))
        described = [parse_caption(caption) for caption in captions]
        return [
            float(spec is not None and caption_shows(spec, asked)) + vqa
            for spec, vqa in zip(described, vqa_scores)
        ]
