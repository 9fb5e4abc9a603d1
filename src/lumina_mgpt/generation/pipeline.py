"""The high-level API: a model folder in, PIL images (or text) out.

    from lumina_mgpt import Pipeline
    pipe = Pipeline.from_pretrained()              # the embedded shapes model
    images = pipe.generate(["a red circle above a blue square"], width=64, height=64, seed=0)
    for image in pipe.iter_generate(prompts, num_images=1000):   # one batch in memory at a time
        ...
    output = pipe("a red circle", num_images_per_prompt=4, generator=torch.Generator().manual_seed(7))
    output.images                                  # diffusers-style: output_type "pil", "np" or "codes"
    pipe.edit(image, "make the red circle blue")   # the other tasks, where the model's lumina.json lists them:
    pipe.control(edge_map, "edges", "a red circle")    # control, subject, predict, caption, ask, rewrite
    pipe.generate(["draw me a RED circle please"], think="self")   # the model rewrites the request first
    pipe.generate(["a red circle"], best_of=8, verifier="self")    # 8 candidates, the model's own judge keeps one

Model folders (project, official, hub ids, the embedded model) are read by `lumina_mgpt.model_folder`.

Every argument is checked before any compute, with a one-line GenerationError (or FormatError for
sizes) saying what is accepted; `lumina generate` runs the same checks before loading the model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lumina_mgpt.errors import GenerationError
from lumina_mgpt.formats import (
    IMAGE_PLACEHOLDER,
    ImageSegment,
    VocabLayout,
    encode_generation_prompt,
    parse,
    text_to_image_prompt,
)
from lumina_mgpt.generation.best_of import BestOf, candidate_seeds, check_best_of, choose
from lumina_mgpt.generation.checks import (
    check_cfg,
    check_image_dimensions,
    check_integer,
    check_prompts,
    check_seeds,
    check_sjd_window,
    check_temperature,
    check_top_k,
    check_top_p,
)
from lumina_mgpt.generation.engine import Engine, GenerationSettings, RowCallback
from lumina_mgpt.generation.sampling import SamplingSettings
from lumina_mgpt.generation.tasks import (
    TEXT_TEMPERATURE,
    TaskRequest,
    TaskRunner,
    check_request_batch,
    input_bucket,
    request_fields,
    task_defaults,
)
from lumina_mgpt.generation.thinking import SELF as SELF_THINKING
from lumina_mgpt.generation.thinking import ChatThinker, check_think_spec
from lumina_mgpt.generation.verifiers import load_verifiers
from lumina_mgpt.model_folder import (
    CAPTION,
    CHAT,
    CONTROL,
    EDIT,
    PROJECT_DEFAULT_TASKS,
    REWRITE,
    SUBJECT,
    TEXT_TO_IMAGE,
    VQA,
    Defaults,
    ModelInfo,
    check_tasks,
    read_model_info,
    require_task,
    write_project_file,
)
from lumina_mgpt.text.known_words import PROMPT_WORDS_FILE, KnownWords

OUTPUT_TYPES = ("pil", "np", "codes")
DEVICES_ACCEPTED = "cpu, cuda, cuda:N or mps"


@dataclass(frozen=True)
class ChatReply:
    """A chat answer: its text (images marked `<|image|>`) and the images it wrote."""

    text: str
    images: list[Image.Image]


@dataclass(frozen=True)
class PipelineOutput:
    """What `pipe(...)` returns: `images` is a list of PIL images ("pil"), a float32 array (N, H, W, 3)
    in [0, 1] ("np") or an int64 array of code grids (N, h, w) ("codes")."""

    images: list[Image.Image] | np.ndarray


@dataclass(frozen=True)
class GenerationPlan:
    """A checked text-to-image request: `prompts` and `seeds` hold one entry per image, prompt-major;
    `requests`, when the prompts are refined ones (`Pipeline.think_plan`), what was asked, and `thinking` one
    metadata object per image saying who refined it and how (thinking.Thought.metadata)."""

    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    width: int
    height: int
    settings: GenerationSettings
    batch_size: int
    sjd_window: int | None
    requests: tuple[str, ...] | None = None
    thinking: tuple[dict, ...] | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    def batches(self) -> Iterator[tuple[range, list[str], list[int]]]:
        """(image indices, prompts, seeds) of each batch, in order."""
        for start in range(0, len(self), self.batch_size):
            indices = range(start, min(start + self.batch_size, len(self)))
            yield indices, list(self.prompts[start: indices.stop]), list(self.seeds[start: indices.stop])


def make_settings(
    defaults: Defaults,
    cfg: float | None = None,
    top_k: int | None = None,
    top_p: float = 1.0,
    temperature: float | None = None,
    text_top_k: int | None = None,
    cfg_schedule: str | None = None,
) -> GenerationSettings:
    """Checked generation settings, with `defaults` where an argument is None."""
    temperature = check_temperature("temperature", defaults.temperature if temperature is None else temperature)
    image_top_k = check_top_k("top_k", defaults.image_top_k if top_k is None else top_k)
    text_top_k = check_top_k("text top_k", defaults.text_top_k if text_top_k is None else text_top_k)
    return GenerationSettings(
        image=SamplingSettings(temperature, image_top_k, check_top_p("top_p", top_p)),
        text=SamplingSettings(temperature, text_top_k),
        cfg=check_cfg("cfg", defaults.cfg if cfg is None else cfg),
        cfg_schedule=defaults.cfg_schedule if cfg_schedule is None else cfg_schedule,
    )


def plan_generation(
    layout: VocabLayout,
    defaults: Defaults,
    prompts: str | Sequence[str],
    width: int | None = None,
    height: int | None = None,
    num_images: int = 1,
    seed: int | Sequence[int] = 0,
    cfg: float | None = None,
    top_k: int | None = None,
    top_p: float = 1.0,
    temperature: float | None = None,
    cfg_schedule: str | None = None,
    batch_size: int = 8,
    sjd_window: int | None = None,
) -> GenerationPlan:
    """Check a text-to-image request against a model's layout and defaults (no model needed); see
    `Pipeline.generate` for the arguments."""
    prompts = check_prompts(prompts)
    num_images = check_integer("num_images", num_images, 1, "images per prompt")
    batch_size = check_integer("batch_size", batch_size, 1, "images decoded together")
    width, height = check_image_dimensions(
        defaults.size[0] if width is None else width, defaults.size[1] if height is None else height, layout
    )
    settings = make_settings(
        defaults, cfg=cfg, top_k=top_k, top_p=top_p, temperature=temperature, cfg_schedule=cfg_schedule
    )
    per_image = tuple(p for p in prompts for _ in range(num_images))
    seeds = tuple(check_seeds(seed, len(per_image)))
    return GenerationPlan(per_image, seeds, width, height, settings, batch_size, check_sjd_window(sjd_window))


def image_parameters(
    asked: dict, width: int, height: int, seed: int, settings: GenerationSettings, sjd_window: int | None,
    layout: VocabLayout,
) -> str:
    """The JSON `parameters` text every generated image carries (save_png writes it into the PNG): what was
    asked (`asked`: prompt, or task and inputs), then the image's size, seed and sampling settings."""
    return json.dumps({
        **asked, "width": width, "height": height, "seed": seed, "cfg": settings.cfg,
        "cfg_schedule": settings.cfg_schedule, "image_sampling": asdict(settings.image), "sjd_window": sjd_window,
        "model_layout": layout.name,
    })  # fmt: skip


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The torch device to run on (None: cuda when available, else cpu); GenerationError for a device that is
    malformed or not present on this machine."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise GenerationError(f"unknown device {device!r}; accepted: {DEVICES_ACCEPTED}") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise GenerationError(f"device {device!r} needs a CUDA GPU, but torch sees none on this machine; use cpu")
        if parsed.index is not None and parsed.index >= count:
            raise GenerationError(
                f"device {device!r} does not exist: torch sees {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}"
            )
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise GenerationError(f"device {device!r} needs Apple's MPS, which torch does not see here; use cpu")
    elif parsed.type != "cpu":
        raise GenerationError(f"device type {parsed.type!r} is not supported; accepted: {DEVICES_ACCEPTED}")
    return parsed


def load_options(
    device: str | torch.device | None, dtype: torch.dtype | None = None, quant: str | None = None
) -> tuple[torch.device, torch.dtype]:
    """The device and dtype a model loads with (dtype None: bfloat16 on CUDA, else float32), checked together
    with the quantization mode; cheap, so callers run it before the slow load."""
    from lumina_mgpt.model import check_quantization

    device = resolve_device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if quant is not None:
        check_quantization(quant, device, dtype)
    return device, dtype


class Pipeline:
    """A model, its text tokenizer, its image tokenizer and its vocabulary layout, ready to generate.

    `tasks` says what the model was trained for (model_folder.TASKS: text-to-image, chat, edit, control, ...);
    a method whose task is not among them refuses to run. The task prompts of each model family are in
    generation/tasks.py."""

    def __init__(
        self, model, text_tokenizer, image_tokenizer, layout: VocabLayout, defaults: Defaults,
        tasks: Sequence[str] = PROJECT_DEFAULT_TASKS, known_words: KnownWords | None = None,
    ):
        self.model = model
        self.text_tokenizer = text_tokenizer
        self.known_words = known_words
        self.image_tokenizer = image_tokenizer
        self.layout = layout
        self.defaults = defaults
        self.tasks = check_tasks(tasks)
        self.engine = Engine(model, layout)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike | None = None,
        image_tokenizer: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        quant: str | None = None,
        pack_weights: bool | None = None,
    ) -> Pipeline:
        """Load a project or official folder; with no path, the embedded shapes model.

        `quant` quantizes the decoder's linear weights after loading: "int8" (CPU and CUDA) or
        "int4" (CUDA, bfloat16); see `lumina_mgpt.model.quantize_model`. `pack_weights` (default: on CPU
        without quant) packs them for fast CPU decoding, leaving a model that cannot be saved or trained
        (see `lumina_mgpt.model.pack_linear_weights`).
        """
        device, dtype = load_options(device, dtype, quant)
        return cls.from_model_info(
            read_model_info(path, image_tokenizer), device=device, dtype=dtype, quant=quant, pack_weights=pack_weights
        )

    @classmethod
    def from_model_info(
        cls,
        info: ModelInfo,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        quant: str | None = None,
        pack_weights: bool | None = None,
    ) -> Pipeline:
        """Load the model of a folder already read by `read_model_info` (the slow part of `from_pretrained`)."""
        from lumina_mgpt.model import load_model, pack_linear_weights, quantize_model
        from lumina_mgpt.vision import ImageTokenizer

        device, dtype = load_options(device, dtype, quant)
        model = load_model(info.folder, device=device, dtype=dtype).eval()
        if quant is not None:
            quantize_model(model, quant)
        if pack_weights is None:
            pack_weights = device.type == "cpu" and quant is None
        if pack_weights:
            pack_linear_weights(model)
        vision = ImageTokenizer.from_pretrained(info.image_tokenizer_path).to(device)
        if vision.codebook_size != info.layout.codebook_size:
            raise GenerationError(
                f"image tokenizer {info.image_tokenizer_path} has {vision.codebook_size} codes but the model's layout "
                f"expects {info.layout.codebook_size}; pass the image tokenizer the model was trained with"
            )
        known_words = KnownWords.from_folder(info.folder)
        return cls(model, info.text_tokenizer, vision, info.layout, info.defaults, info.tasks, known_words)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write a project folder that `from_pretrained` (and, for the model, transformers) loads."""
        from lumina_mgpt.model import save_model

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        save_model(self.model, folder)
        self.text_tokenizer.save(folder / "tokenizer.json")
        self.image_tokenizer.save_pretrained(folder / "image_tokenizer")
        write_project_file(folder, self.layout, self.defaults, self.tasks)
        if self.known_words is not None:
            self.known_words.save(folder)
        else:  # a folder written over keeps no word list of another model
            (folder / PROMPT_WORDS_FILE).unlink(missing_ok=True)

    # ------------------------------------------------------------------ generation
    def settings(
        self,
        cfg: float | None = None,
        top_k: int | None = None,
        top_p: float = 1.0,
        temperature: float | None = None,
        text_top_k: int | None = None,
        cfg_schedule: str | None = None,
    ) -> GenerationSettings:
        """Generation settings with this model's defaults filled in (checked: see `make_settings`)."""
        return make_settings(
            self.defaults, cfg=cfg, top_k=top_k, top_p=top_p, temperature=temperature, text_top_k=text_top_k,
            cfg_schedule=cfg_schedule,
        )

    def read(self, text: str) -> str:
        """`text` as the model reads it. A model folder that lists the words its model knows (text/known_words.py)
        reads only those: a slip one edit from a known word is corrected ("xircle" -> "circle"), other unknown
        words are left out. Metadata record the text read as `read_as` where it differs."""
        return text if self.known_words is None else self.known_words.read(text)

    def read_request(self, request: TaskRequest) -> TaskRequest:
        """A task request with its text and subject as the model reads them (`read`)."""
        subject = request.subject if request.subject is None else self.read(request.subject)
        return replace(request, text=self.read(request.text), subject=subject)

    def read_as(self, text: str) -> dict:
        """{"read_as": what the model read} where it differs from `text`, for metadata; else {}."""
        read = self.read(text)
        return {} if read == text else {"read_as": read}

    def prompt_ids(self, prompt: str, width: int, height: int) -> np.ndarray:
        """The ids of the resolution-aware text-to-image prompt, ending with the separator."""
        text = text_to_image_prompt(self.read(prompt), width, height)
        return encode_generation_prompt([text], [], self.text_tokenizer, self.layout)

    def generate_codes(
        self,
        prompts: Sequence[str],
        width: int,
        height: int,
        settings: GenerationSettings,
        seeds: Sequence[int],
        on_row: RowCallback | None = None,
        progress: bool = True,
        sjd_window: int | None = None,
    ) -> list[np.ndarray]:
        """Code grids (h, w) for each prompt, decoded as one batch; see `generate`."""
        prompts = check_prompts(prompts)
        width, height = check_image_dimensions(width, height, self.layout)
        ids = [self.prompt_ids(p, width, height) for p in prompts]
        return self.engine.generate_images(
            ids, width, height, settings, check_seeds(list(seeds), len(prompts)), on_row=on_row, progress=progress,
            sjd_window=sjd_window,
        )

    def plan(self, prompts: str | Sequence[str], **options) -> GenerationPlan:
        """`plan_generation` with this model's layout and defaults: the checks of `generate`, without compute."""
        self._require(TEXT_TO_IMAGE)
        return plan_generation(self.layout, self.defaults, prompts, **options)

    def run_plan(
        self,
        plan: GenerationPlan,
        output_type: str = "pil",
        on_row: Callable[[int, int, np.ndarray], None] | None = None,
        progress: bool = True,
    ) -> Iterator[Image.Image | np.ndarray]:
        """Yield the plan's images in order, batch by batch, as each batch is decoded: only one batch is
        held at a time. `output_type`: "pil" (with metadata), "np" ((H, W, 3) float32 in [0, 1]) or "codes"
        ((h, w) int64 grids). `on_row(batch, row, codes)` is called for each image row of codes the
        batch has finished, `codes` being (batch size, w)."""
        self._require(TEXT_TO_IMAGE)
        if output_type not in OUTPUT_TYPES:
            raise GenerationError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}; got {output_type!r}")
        return self._run_plan(plan, output_type, on_row, progress)

    def _run_plan(self, plan, output_type, on_row, progress):
        for number, (indices, prompts, seeds) in enumerate(plan.batches()):
            row_callback = None if on_row is None else (lambda row, codes, batch=number: on_row(batch, row, codes))
            grids = self.generate_codes(
                prompts, plan.width, plan.height, plan.settings, seeds, on_row=row_callback, progress=progress,
                sjd_window=plan.sjd_window,
            )
            if output_type == "codes":
                yield from grids
                continue
            codes = torch.as_tensor(np.stack(grids))
            if output_type == "np":
                yield from ((self.image_tokenizer.decode(codes).permute(0, 2, 3, 1) + 1) / 2).cpu().numpy()
                continue
            pictures = self.image_tokenizer.decode_to_pil(codes)
            for index, prompt, image_seed, picture in zip(indices, prompts, seeds, pictures):
                # A refined prompt keeps the request it came from: both are in the metadata, with how it was refined.
                asked = {"prompt": prompt} if plan.requests is None else {
                    "prompt": plan.requests[index], "rewritten_prompt": prompt,
                    **({} if plan.thinking is None else {"thinking": plan.thinking[index]}),
                }
                asked.update(self.read_as(prompt))
                picture.info["parameters"] = image_parameters(
                    asked, plan.width, plan.height, image_seed, plan.settings, plan.sjd_window, self.layout
                )
                yield picture

    def iter_generate(
        self,
        prompts: str | Sequence[str],
        width: int | None = None,
        height: int | None = None,
        num_images: int = 1,
        seed: int | Sequence[int] = 0,
        cfg: float | None = None,
        top_k: int | None = None,
        top_p: float = 1.0,
        temperature: float | None = None,
        cfg_schedule: str | None = None,
        batch_size: int = 8,
        on_row: RowCallback | None = None,
        progress: bool = True,
        sjd_window: int | None = None,
        rewrite: bool = False,
        best_of: int = 1,
        verifier: object = None,
        think: str | ChatThinker | None = None,
    ) -> Iterator[Image.Image]:
        """Text to image: yields num_images images per prompt, prompt-major, each as soon as its batch is
        decoded (one batch in memory); `generate` returns them as a list.

        width and height default to the model's size; image i of the whole call uses seed `seed + i`
        (0 <= seed, seed + i <= 2**63-1), so results do not depend on batch_size; `seed` may also be a
        list of one seed per image. cfg, top_k (>= 1), top_p (in (0, 1]) and temperature (0: greedy)
        default to the model's (`self.defaults`; top_p 1.0), and so does cfg_schedule: "constant", or
        "decay-to-4" as official Lumina-mGPT 2.0 (the default of its folders; see docs/FORMATS.md).
        `sjd_window=L` (16 is usual) decodes with speculative Jacobi decoding: the same distribution of
        images in fewer forwards, though not the same image for a seed as plain decoding. Each image
        carries its prompt and settings in `image.info["parameters"]` (JSON), which `save_png` writes
        into the PNG's text metadata. `think` refines each prompt before drawing it (`think_plan`): "self" (a
        model trained for "rewrite"; `rewrite=True` is the same) or the URL of an OpenAI-compatible chat API;
        the metadata keeps both prompts. `best_of=N` with `verifier` draws N candidates per image and returns
        the one the verifiers rank first (`iter_best_of`); a verifier with best_of=1 scores every image.
        Bad arguments raise GenerationError (FormatError for unrepresentable sizes) when this is called,
        before the first image is asked for (verifiers and thinkers included); with `think`, the prompts
        are refined then too.
        """
        if rewrite:
            if think is not None:
                raise GenerationError(f"rewrite=True is think='self'; give one of them, not both (think={think!r})")
            think = SELF_THINKING
        if think is not None and not isinstance(think, ChatThinker) and check_think_spec(think) == SELF_THINKING:
            require_task(self.tasks, REWRITE)
        choosing = best_of != 1 or verifier is not None
        if choosing:
            check_best_of(best_of)
            load_verifiers(verifier, self)  # refused now, before any compute
            if on_row is not None:
                raise GenerationError("on_row reports the rows of one decoded batch; best-of-N has none: drop on_row")
        plan = self.plan(
            prompts, width=width, height=height, num_images=num_images, seed=seed, cfg=cfg, top_k=top_k, top_p=top_p,
            temperature=temperature, cfg_schedule=cfg_schedule, batch_size=batch_size, sjd_window=sjd_window,
        )
        if think is not None:
            plan = self.think_plan(plan, think)
        if choosing:
            return (result.image for result in self.iter_best_of(plan, best_of, verifier, progress=progress))
        return self.run_plan(plan, on_row=None if on_row is None else (lambda _, row, codes: on_row(row, codes)),
                             progress=progress)

    def iter_best_of(
        self, plan: GenerationPlan, best_of: int, verifier: object, progress: bool = True
    ) -> Iterator[BestOf]:
        """Best-of-N over a plan: for each of its images, `best_of` candidates decoded in ONE engine call
        (with the plan's settings, SJD included), scored by `verifier` and ranked (see generation/best_of.py
        for the candidate seeds and the metadata; verifiers.py for the verifiers). `verifier`: a spec ("self",
        "self-caption", "python:module:function", "http:URL"), a callable (images, prompt) -> scores, or a list of them,
        combined by mean rank. Each engine call decodes the candidates of max(1, batch_size // best_of)
        images. The verifiers judge the prompt drawn (the refined one after thinking). Yields one BestOf per
        image of the plan, in order; checks everything before the first engine call."""
        self._require(TEXT_TO_IMAGE)
        best_of = check_best_of(best_of)
        verifiers = load_verifiers(verifier, self)
        seeds = [seed for image_seed in plan.seeds for seed in candidate_seeds(image_seed, best_of)]

        def each(values):
            return None if values is None else tuple(value for value in values for _ in range(best_of))

        candidates = replace(
            plan, prompts=each(plan.prompts), seeds=tuple(seeds), requests=each(plan.requests),
            thinking=each(plan.thinking), batch_size=max(1, plan.batch_size // best_of) * best_of,
        )
        return self._choose_best(candidates, best_of, verifiers, progress)

    def _choose_best(self, candidates: GenerationPlan, best_of: int, verifiers, progress: bool) -> Iterator[BestOf]:
        group: list[Image.Image] = []
        for index, image in enumerate(self._run_plan(candidates, "pil", None, progress)):
            group.append(image)
            if len(group) == best_of:
                first = index + 1 - best_of
                yield choose(group, candidates.prompts[index], candidates.seeds[first: index + 1], verifiers)
                group = []

    def generate(self, prompts: str | Sequence[str], **options) -> list[Image.Image]:
        """Text to image: `iter_generate`'s images as a list, prompt-major (its arguments, described there)."""
        return list(self.iter_generate(prompts, **options))

    def __call__(
        self,
        prompt: str | Sequence[str],
        width: int | None = None,
        height: int | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        output_type: str = "pil",
        callback_on_step_end: Callable[[Pipeline, int, dict], object] | None = None,
        cfg: float | None = None,
        top_k: int | None = None,
        top_p: float = 1.0,
        temperature: float | None = None,
        cfg_schedule: str | None = None,
        batch_size: int = 8,
        sjd_window: int | None = None,
        progress: bool = True,
    ) -> PipelineOutput:
        """The diffusers-style call: `generate` under diffusers' argument names, returning a PipelineOutput.

        generator: None (seed 0), one torch.Generator (image i uses its initial_seed() + i, as `seed` in
        `generate`) or a list of one generator per image (each image uses its generator's initial_seed();
        sampling itself draws from a counter-based hash of the seed, never from the generator's state).
        output_type: "pil", "np" or "codes" (see PipelineOutput).
        callback_on_step_end(pipe, step, info): a step is one row of image codes finished for every image
        of the batch being decoded; steps count on across batches (batch b's row r is step b * rows + r).
        info holds "batch", "row", "rows" (rows per image), "images" (indices of the batch's images in
        the output) and "codes" (that row's codes, an int64 array (batch size, codes per row)). Its
        return value is ignored.
        """
        per_prompt = check_integer("num_images_per_prompt", num_images_per_prompt, 1, "images per prompt")
        seeds = _generator_seeds(generator, len(check_prompts(prompt)) * per_prompt)
        plan = self.plan(
            prompt, width=width, height=height, num_images=per_prompt, seed=seeds, cfg=cfg, top_k=top_k, top_p=top_p,
            temperature=temperature, cfg_schedule=cfg_schedule, batch_size=batch_size, sjd_window=sjd_window,
        )
        on_row = None
        if callback_on_step_end is not None:
            from lumina_mgpt.formats import grid_shape

            rows = grid_shape(plan.width, plan.height, self.layout)[0]
            batches = [indices for indices, _, _ in plan.batches()]

            def on_row(batch: int, row: int, codes: np.ndarray) -> None:
                info = {"batch": batch, "row": row, "rows": rows, "images": list(batches[batch]), "codes": codes}
                callback_on_step_end(self, batch * rows + row, info)

        images = list(self.run_plan(plan, output_type=output_type, on_row=on_row, progress=progress))
        return PipelineOutput(images if output_type == "pil" else np.stack(images))

    def chat(
        self,
        turns: Sequence[str],
        images: Sequence[Image.Image] = (),
        seed: int = 0,
        max_new_tokens: int = 512,
        temperature: float | None = None,
        top_k: int | None = None,
        image_size: tuple[int, int] | None = None,
    ) -> ChatReply:
        """Answer the last human turn of a conversation (turns alternate human, assistant, ...,
        human; `<|image|>` marks where each image goes). Images the model opens in its answer are
        written at `image_size`; the reply's text marks them with `<|image|>`. Refused (GenerationError)
        for a model whose tasks do not include "chat"."""
        self._require(CHAT)
        turns = check_prompts(turns, what="turn")
        if len(turns) % 2 != 1:
            raise GenerationError(
                f"a conversation to answer has an odd number of turns (ending with a question), got {len(turns)}"
            )
        (seed,) = check_seeds(seed, 1)
        settings = self.settings(temperature=temperature, text_top_k=top_k)
        prompt = encode_generation_prompt(turns, self._encode_images(images), self.text_tokenizer, self.layout)
        (answer,) = self.engine.generate_text(
            [prompt], settings, [seed], max_new_tokens=max_new_tokens,
            image_size=image_size or self.defaults.size, progress=False,
        )
        return self.read_answer(answer)

    def read_answer(self, answer: np.ndarray) -> ChatReply:
        """An answer's ids (up to its separator, if any) as text, with the images it wrote decoded."""
        if len(answer) and answer[-1] == self.layout.separator_id:
            answer = answer[:-1]
        text, grids = [], []
        for segment in parse(answer, self.layout):
            if isinstance(segment, ImageSegment):
                text.append(IMAGE_PLACEHOLDER)
                grids.append(segment.codes)
            else:
                text.append(self.text_tokenizer.decode([int(t) for t in segment.ids]))
        pictures = [self.image_tokenizer.decode_to_pil(torch.as_tensor(g)[None])[0] for g in grids if g.size]
        return ChatReply("".join(text), pictures)

    # ------------------------------------------------------------------ the other tasks
    def run_image_tasks(
        self,
        requests: Sequence[TaskRequest],
        seed: int | Sequence[int] = 0,
        width: int | None = None,
        height: int | None = None,
        cfg: float | None = None,
        top_k: int | None = None,
        top_p: float = 1.0,
        temperature: float | None = None,
        cfg_schedule: str | None = None,
        batch_size: int = 8,
        progress: bool = False,
        sjd_window: int | None = None,
    ) -> list[Image.Image]:
        """The answer image of each request (edit, control, subject, or a prediction task), in order;
        requests of one answer size are decoded `batch_size` at a time in one engine call.

        Request i uses seed `seed + i` (or seed[i]). width x height is the answer's size: by default one
        panel of the family (64x64 for project models, 512x512 for official v2) or, on official v1, the
        input's resolution bucket. Sampling defaults to the model's, with what its lumina.json sets apart
        for the task (`Defaults.per_task`; official v1: cfg 1.0, image top-k 200, as its Omni code);
        `sjd_window` decodes speculatively, as in `generate`. Requests of one size and settings share
        engine calls. Each image carries its task, inputs (text, kind, subject, the input image's size and
        sha256) and settings in `image.info["parameters"]` (JSON), as `generate`'s do.
        Refused (GenerationError) before any compute for tasks the model's lumina.json does not list.
        """
        runner = TaskRunner(self)
        requests, seeds, batch_size = check_request_batch(requests, runner.family, self.tasks, seed, batch_size)
        if any(request.task in (CAPTION, VQA, REWRITE) for request in requests):
            raise GenerationError("caption, vqa and rewrite answer text: run them with run_text_tasks")
        settings = [
            make_settings(
                task_defaults(runner.family, self.defaults, request.task), cfg=cfg, top_k=top_k, top_p=top_p,
                temperature=temperature, cfg_schedule=cfg_schedule,
            )
            for request in requests
        ]
        sjd_window = check_sjd_window(sjd_window)
        images = runner.run_images(requests, seeds, settings, width, height, batch_size, progress, sjd_window)
        for request, image_seed, image, request_settings in zip(requests, seeds, images, settings):
            asked = {**request_fields(request), **self.read_as(request.text)}
            image.info["parameters"] = image_parameters(
                asked, *image.size, image_seed, request_settings, sjd_window, self.layout
            )
        return images

    def run_text_tasks(
        self,
        requests: Sequence[TaskRequest],
        seed: int | Sequence[int] = 0,
        temperature: float | None = None,
        top_k: int | None = None,
        max_new_tokens: int = 64,
        batch_size: int = 8,
        progress: bool = False,
    ) -> list[str]:
        """The text answer of each request (caption, vqa, rewrite), in order, `batch_size` per engine call.

        Answers are read greedily unless `temperature` is given (short exact answers: a caption, a count,
        a color); top_k defaults to the model's text top-k. Request i uses seed `seed + i` (or seed[i]).
        Images go in at the resolution bucket of the model's size closest to them in aspect
        (`tasks.understanding_codes`). caption and vqa also run
        on chat models; the rest is refused (GenerationError) where the model's lumina.json lacks the task."""
        runner = TaskRunner(self)
        requests, seeds, batch_size = check_request_batch(requests, runner.family, self.tasks, seed, batch_size)
        if any(request.task not in (CAPTION, VQA, REWRITE) for request in requests):
            raise GenerationError("only caption, vqa and rewrite answer text; run image tasks with run_image_tasks")
        max_new_tokens = check_integer("max_new_tokens", max_new_tokens, 1, "tokens an answer may have")
        settings = make_settings(
            task_defaults(runner.family, self.defaults), temperature=TEXT_TEMPERATURE if temperature is None else
            temperature, text_top_k=top_k,
        )
        return runner.run_texts(requests, seeds, settings, max_new_tokens, batch_size, progress)

    def edit(self, image: Image.Image, instruction: str, seed: int = 0, **sampling) -> Image.Image:
        """`image` edited as `instruction` says ("make the red circle blue"); `sampling`: the options of
        `run_image_tasks` (width, height, cfg, top_k, top_p, temperature, cfg_schedule)."""
        return self.run_image_tasks([TaskRequest(EDIT, instruction, image)], seed=seed, **sampling)[0]

    def control(self, condition_image: Image.Image, kind: str, prompt: str, seed: int = 0, **sampling) -> Image.Image:
        """An image that follows `condition_image`, a map of `kind` ("edges" for project models; official
        v2: "depth" or "canny"), and shows `prompt`; `sampling` as in `edit`."""
        request = TaskRequest(CONTROL, prompt, condition_image, kind=kind)
        return self.run_image_tasks([request], seed=seed, **sampling)[0]

    def subject(
        self, reference_image: Image.Image, subject: str, prompt: str, seed: int = 0, **sampling
    ) -> Image.Image:
        """The object of `reference_image`, described by `subject` ("red circle"), in the new scene `prompt`
        ("the same red circle together with a blue square"); `sampling` as in `edit`."""
        request = TaskRequest(SUBJECT, prompt, reference_image, subject=subject)
        return self.run_image_tasks([request], seed=seed, **sampling)[0]

    def predict(self, image: Image.Image, task: str, prompt: str = "", seed: int = 0, **sampling) -> Image.Image:
        """The `task` map of `image`: "segmentation" or "edges" for project models; official v2 "depth",
        "canny", "hed" or "pose" (`prompt`: the image's caption, which v2's sentence ends with); official v1
        "segmentation", "depth", "normals" or "pose". `sampling` as in `edit`."""
        return self.run_image_tasks([TaskRequest(task, prompt, image)], seed=seed, **sampling)[0]

    def caption(self, image: Image.Image, question: str = "", seed: int = 0, **sampling) -> str:
        """A caption of `image` (asked with the family's own question unless `question` is given);
        `sampling`: the options of `run_text_tasks` (temperature, top_k, max_new_tokens)."""
        return self.run_text_tasks([TaskRequest(CAPTION, question, image)], seed=seed, **sampling)[0]

    def ask(self, image: Image.Image, question: str, seed: int = 0, **sampling) -> str:
        """The answer to a question about `image` ("how many circles are there?"); `sampling` as in `caption`.
        A project model asked where objects are first writes what it sees; only the answer after that is
        returned."""
        return self.run_text_tasks([TaskRequest(VQA, question, image)], seed=seed, **sampling)[0]

    def rewrite(self, prompt: str, seed: int = 0, **sampling) -> str:
        """`prompt` rewritten by the model as the caption it draws best; `sampling` as in `caption`."""
        return self.run_text_tasks([TaskRequest(REWRITE, prompt)], seed=seed, **sampling)[0]

    def rewrite_plan(self, plan: GenerationPlan) -> GenerationPlan:
        """`plan` drawing the model's rewrite of each prompt (each distinct prompt rewritten once, greedily),
        keeping the prompts asked as the plan's `requests`, which the images' metadata records (with how the
        model read each request, `thinking.read_as`, where that differs)."""
        require_task(self.tasks, REWRITE)
        asked = plan.prompts if plan.requests is None else plan.requests
        distinct = list(dict.fromkeys(asked))
        rewritten = dict(zip(distinct, self.run_text_tasks([TaskRequest(REWRITE, p) for p in distinct])))
        return replace(
            plan, prompts=tuple(rewritten[p] for p in asked), requests=tuple(asked),
            thinking=tuple({"by": SELF_THINKING, **self.read_as(p)} for p in asked),
        )

    def think_plan(self, plan: GenerationPlan, think: str | ChatThinker) -> GenerationPlan:
        """`plan` drawing a refined prompt for each of its prompts (each distinct prompt refined once): by the
        model itself (think="self": `rewrite_plan`) or by an OpenAI-compatible chat endpoint (its URL, or a
        configured `thinking.ChatThinker`), whose failures leave the prompt as asked, with a warning on stderr.
        The images' metadata keep the prompt asked, the one drawn and the thinking (reasoning or failure)."""
        if not isinstance(think, ChatThinker):
            if check_think_spec(think) == SELF_THINKING:
                return self.rewrite_plan(plan)
            think = ChatThinker(think)
        asked = plan.prompts if plan.requests is None else plan.requests
        thoughts = {prompt: think.think(prompt) for prompt in dict.fromkeys(asked)}
        return replace(
            plan, prompts=tuple(thoughts[p].prompt for p in asked), requests=tuple(asked),
            thinking=tuple(thoughts[p].metadata() for p in asked),
        )

    def _require(self, task: str) -> None:
        require_task(self.tasks, task)

    def _encode_images(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        from lumina_mgpt.formats import resize_to_bucket

        grids = []
        for image in images:
            size = input_bucket(self.layout, self.defaults, image)
            tensor_codes = self.image_tokenizer.encode([resize_to_bucket(image.convert("RGB"), size)])
            grids.append(tensor_codes[0].cpu().numpy())
        return grids


def _generator_seeds(generator: object, count: int) -> int | list[int]:
    """The seed (or one seed per image) that `generator` of `Pipeline.__call__` stands for."""
    if generator is None:
        return 0
    if isinstance(generator, torch.Generator):
        return generator.initial_seed()
    if isinstance(generator, Sequence) and all(isinstance(g, torch.Generator) for g in generator):
        if len(generator) != count:
            raise GenerationError(
                f"got {len(generator)} generators for {count} images; give one generator, or one per image"
            )
        return [g.initial_seed() for g in generator]
    raise GenerationError(
        f"generator must be a torch.Generator or a list of one per image, got {type(generator).__name__}"
    )


