"""The web UI (Gradio), mounted by serve/app.py at /ui on the API's server and fed by the same scheduler:
text to image with the sampling settings, seeds, a gallery and the picture drawn row by row while it
decodes; a Chat tab and an Edit tab only for a model trained for those tasks."""

from __future__ import annotations

import asyncio
import io

import gradio as gr
from PIL import Image

from lumina_mgpt.errors import LuminaError
from lumina_mgpt.formats import IMAGE_PLACEHOLDER, bucket_sizes
from lumina_mgpt.model_folder import CHAT, EDIT
from lumina_mgpt.serve.app import request_outcome
from lumina_mgpt.serve.parsing import ApiError, image_request
from lumina_mgpt.serve.scheduler import BatchScheduler, PartialImage, png_bytes

MAX_UI_IMAGES = 8
# Small pictures stay crisp when scaled up, in tiles of at most 256 px however few there are.
UI_CSS = (
    "#gallery img { image-rendering: pixelated; } "
    "#gallery .grid-container { grid-template-columns: repeat(auto-fill, minmax(128px, 256px)) !important; }"
)


def build_ui(pipe, scheduler: BatchScheduler, timeout_s: float) -> gr.Blocks:
    """The Blocks app for `pipe` (see the module docstring)."""
    defaults = pipe.defaults
    sizes = [f"{w}x{h}" for w, h in bucket_sizes(max(defaults.size), step=pipe.layout.pixels_per_indicator)]
    default_size = f"{defaults.size[0]}x{defaults.size[1]}"
    sizes = sizes if default_size in sizes else [default_size, *sizes]

    async def generate(prompt, size, n, seed, random_seed, cfg, temperature, top_k, sjd):
        body = {
            "prompt": prompt,
            "size": size,
            "n": int(n),
            "cfg": float(cfg),
            "temperature": float(temperature),
            "top_k": int(top_k),
            "sjd": bool(sjd),
            "stream": True,
        }
        if not random_seed:
            body["seed"] = int(seed)
        try:
            request = image_request(body, pipe, min(scheduler.max_batch, MAX_UI_IMAGES))
            partials: asyncio.Queue[PartialImage] = asyncio.Queue()
            ticket = scheduler.submit(request, partials.put_nowait)
        except (ApiError, ValueError) as error:
            raise gr.Error(str(error)) from None
        shown: list[Image.Image | None] = [None] * request.n
        try:
            while not ticket.result.done():
                getter = asyncio.ensure_future(partials.get())
                await asyncio.wait({getter, ticket.result}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    if not ticket.result.done():
                        raise gr.Error(f"no answer within {timeout_s:g} s; try again")
                    break
                partial = getter.result()
                shown[partial.image_index] = _image(partial.png)
                yield [p for p in shown if p is not None], f"decoding: {partial.rows} rows written", request.seed
            try:
                pngs = request_outcome(ticket.result)
            except ApiError as error:
                raise gr.Error(error.message) from None
        finally:
            if not ticket.result.done():
                scheduler.cancel(ticket)
        seeds = ", ".join(str(request.seed + i) for i in range(request.n))
        yield [_image(png) for png in pngs], f"done: {request.n} image(s) {size}, seeds {seeds}", request.seed

    with gr.Blocks(title="lumina-mgpt", analytics_enabled=False) as blocks:
        gr.Markdown(f"## lumina-mgpt &middot; {', '.join(pipe.tasks)}")
        with gr.Tab("Text to image"):
            prompt = gr.Textbox(label="Prompt", placeholder="a red circle above a blue square", elem_id="prompt")
            with gr.Row():
                size = gr.Dropdown(sizes, value=default_size, label="Size (width x height)")
                n = gr.Slider(1, min(scheduler.max_batch, MAX_UI_IMAGES), value=1, step=1, label="Images")
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed (image i uses seed + i)")
                random_seed = gr.Checkbox(value=False, label="Random seed")
            with gr.Accordion("Sampling", open=False):
                cfg = gr.Slider(1.0, 10.0, value=defaults.cfg, step=0.1, label="Guidance (CFG; 1 is off)")
                temperature = gr.Slider(
                    0.0, 2.0, value=defaults.temperature, step=0.05, label="Temperature (0 is greedy)"
                )
                top_k = gr.Slider(
                    1,
                    pipe.layout.codebook_size,
                    value=min(defaults.image_top_k, pipe.layout.codebook_size),
                    step=1,
                    label="Top-k",
                )
                sjd = gr.Checkbox(value=False, label="Speculative Jacobi decoding")
            button = gr.Button("Generate", variant="primary", elem_id="generate")
            status = gr.Markdown(elem_id="status")
            gallery = gr.Gallery(
                label="Images", height=300, object_fit="contain", allow_preview=False, elem_id="gallery"
            )
            inputs = [prompt, size, n, seed, random_seed, cfg, temperature, top_k, sjd]
            button.click(generate, inputs=inputs, outputs=[gallery, status, seed])
            prompt.submit(generate, inputs=inputs, outputs=[gallery, status, seed])
        if CHAT in pipe.tasks:
            _chat_tab(pipe, scheduler)
        if EDIT in pipe.tasks:
            _edit_tab(pipe, scheduler)
    return blocks


def _chat_tab(pipe, scheduler: BatchScheduler) -> None:
    async def answer(conversation, history, question, picture):
        # The conversation (turns and their images) is kept apart from what the Chatbot shows.
        turns, images = conversation
        text = question + (IMAGE_PLACEHOLDER if picture is not None else "")
        images = images + ([] if picture is None else [picture.convert("RGB")])
        try:
            reply = await scheduler.call(lambda: pipe.chat([*turns, text], images))
        except LuminaError as error:
            raise gr.Error(str(error)) from None
        history = [*history, {"role": "user", "content": question}, {"role": "assistant", "content": reply.text}]
        return ([*turns, text, reply.text], images), history, "", None

    with gr.Tab("Chat"):
        conversation = gr.State(([], []))
        chatbot = gr.Chatbot(label="Conversation", elem_id="chatbot")
        question = gr.Textbox(label="Message (Enter sends)", elem_id="question")
        picture = gr.Image(type="pil", label="Image (optional)")
        question.submit(
            answer,
            inputs=[conversation, chatbot, question, picture],
            outputs=[conversation, chatbot, question, picture],
        )


def _edit_tab(pipe, scheduler: BatchScheduler) -> None:
    async def edit(picture, instruction, seed):
        if picture is None or not instruction:
            raise gr.Error("give an image and an instruction")
        try:
            edited = await scheduler.call(lambda: pipe.edit(picture.convert("RGB"), instruction, seed=int(seed)))
        except LuminaError as error:
            raise gr.Error(str(error)) from None
        return _image(png_bytes(edited))

    with gr.Tab("Edit"):
        with gr.Row():
            picture = gr.Image(type="pil", label="Image")
            result = gr.Image(type="pil", label="Edited")
        instruction = gr.Textbox(label="Instruction")
        seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
        gr.Button("Edit", variant="primary").click(edit, inputs=[picture, instruction, seed], outputs=result)


def _image(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png))
