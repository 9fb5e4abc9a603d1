"""The Pipeline API on the embedded model: arguments refused up front, images yielded batch by batch,
the diffusers-style call, honest tasks, lumina.json checks, and PNG writing that never loses or clobbers."""

import errno
import json
import math
import re
import shutil
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lumina_mgpt.errors import FormatError, GenerationError
from lumina_mgpt.generation.checks import MAX_SEED
from lumina_mgpt.generation.outputs import OutputFolder, check_output_folder, save_png
from lumina_mgpt.generation.pipeline import Pipeline, resolve_device
from lumina_mgpt.model_folder import (
    EMBEDDED_MODEL,
    PROJECT_FILE,
    TASKS,
    Defaults,
    read_model_info,
    read_project_file,
    write_project_file,
)

SIZE = dict(width=32, height=32)  # the embedded layout's smallest square with a few rows: 4 x 4 codes


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.from_pretrained(device="cpu")


@pytest.fixture
def no_compute(pipe, monkeypatch):
    """Fail the test if the engine is asked to decode anything."""
    def refuse(*args, **kwargs):
        raise AssertionError("the engine ran; the request should have been refused first")

    monkeypatch.setattr(pipe.engine, "generate_images", refuse)


def count_engine_calls(pipe, monkeypatch, method: str = "generate_images") -> list[int]:
    """The number of prompts of each call of the engine's `method`, filled in as the calls come."""
    calls = []
    original = getattr(pipe.engine, method)

    def counted(prompts, *args, **kwargs):
        calls.append(len(prompts))
        return original(prompts, *args, **kwargs)

    monkeypatch.setattr(pipe.engine, method, counted)
    return calls


BAD_OPTIONS = [
    (dict(width=0), FormatError, "sizes must be positive integers"),
    (dict(height=-16), FormatError, "sizes must be positive integers"),
    (dict(width=64.0), GenerationError, "width must be an integer number of pixels, got 64.0 (float)"),
    (dict(width=40), FormatError, "multiples of 16"),
    (dict(width=512), FormatError, "at most 256"),
    (dict(width=16, height=80), FormatError, "aspect ratio"),
    (dict(cfg=math.inf), GenerationError, "cfg must be a finite number >= 0"),
    (dict(cfg=math.nan), GenerationError, "cfg must be a finite number >= 0"),
    (dict(cfg=-1.0), GenerationError, "cfg must be a finite number >= 0"),
    (dict(temperature=math.inf), GenerationError, "temperature must be a finite number >= 0 (0 is greedy)"),
    (dict(temperature=-0.5), GenerationError, "temperature must be a finite number >= 0"),
    (dict(top_k=0), GenerationError, "top_k must be an integer >= 1"),
    (dict(top_k=2.5), GenerationError, "top_k must be an integer >= 1"),
    (dict(top_p=0.0), GenerationError, "top_p must be a number in (0, 1]"),
    (dict(top_p=1.5), GenerationError, "top_p must be a number in (0, 1]"),
    (dict(top_p=math.nan), GenerationError, "top_p must be a number in (0, 1]"),
    (dict(seed=-1), GenerationError, "seed must be an integer from 0 to 9223372036854775807"),
    (dict(seed=2**63), GenerationError, "seed must be an integer from 0 to 9223372036854775807"),
    (dict(seed=True), GenerationError, "seed must be an integer or a list"),
    (dict(seed=MAX_SEED, num_images=2), GenerationError, "accepted: a first seed from 0 to 9223372036854775806"),
    (dict(seed=[1, 2]), GenerationError, "got 2 seeds for 1 images"),
    (dict(num_images=0), GenerationError, "num_images must be an integer >= 1"),
    (dict(batch_size=0), GenerationError, "batch_size must be an integer >= 1"),
    (dict(sjd_window=0), GenerationError, "sjd_window must be an integer >= 1"),
]


@pytest.mark.parametrize("options, error, message", BAD_OPTIONS)
def test_bad_options_are_refused_before_any_compute(pipe, no_compute, options, error, message):
    with pytest.raises(error, match=re.escape(message)):
        pipe.generate("a red circle", **{**SIZE, **options})
    # The iterator checks when it is made, not when the first image is asked for.
    with pytest.raises(error, match=re.escape(message)):
        pipe.iter_generate("a red circle", **{**SIZE, **options})


@pytest.mark.parametrize("prompts, message", [
    (b"a red circle", "prompts must be a str or a list of str, got bytes; decode bytes first"),
    ([1, 2], "prompt 1 is int, not str"),
    (None, "prompts must be a str or a list of str, got NoneType"),
    (["a red circle", None], "prompt 2 is NoneType, not str"),
    ([], "no prompts given"),
    ("a red \udcff circle", "prompt 1 is not valid UTF-8 text: '\\udcff' (byte 0xff) at character 6"),
])
def test_prompts_that_are_not_text_are_refused(pipe, no_compute, prompts, message):
    with pytest.raises(GenerationError, match=re.escape(message)):
        pipe.generate(prompts, **SIZE)


def test_zero_width_is_refused_not_replaced_by_the_default(pipe, no_compute):
    with pytest.raises(FormatError, match="image size 0x64"):
        pipe.generate("a red circle", width=0)


def test_iter_generate_decodes_one_batch_per_step_and_matches_generate(pipe, monkeypatch):
    calls = count_engine_calls(pipe, monkeypatch)
    images = pipe.iter_generate(["a red circle", "a blue square"], num_images=2, batch_size=3, seed=4, progress=False,
                                **SIZE)
    assert calls == []
    first = next(images)
    assert calls == [3]  # the first batch only
    rest = list(images)
    assert calls == [3, 1]
    # The same batches on both sides: a different batch shape may move float32 results by an ulp.
    everything = pipe.generate(["a red circle", "a blue square"], num_images=2, batch_size=3, seed=4, progress=False,
                               **SIZE)
    for a, b in zip([first, *rest], everything):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    seeds = [json.loads(image.info["parameters"])["seed"] for image in everything]
    prompts = [json.loads(image.info["parameters"])["prompt"] for image in everything]
    assert seeds == [4, 5, 6, 7] and prompts == ["a red circle"] * 2 + ["a blue square"] * 2


def test_diffusers_style_call_is_generate_under_other_names(pipe):
    reference = pipe.generate("a red circle", num_images=2, seed=7, progress=False, **SIZE)
    output = pipe("a red circle", num_images_per_prompt=2, generator=torch.Generator().manual_seed(7), progress=False,
                  **SIZE)
    assert [np.asarray(i).tolist() for i in output.images] == [np.asarray(i).tolist() for i in reference]

    as_array = pipe("a red circle", num_images_per_prompt=2, generator=torch.Generator().manual_seed(7),
                    output_type="np", progress=False, **SIZE).images
    assert as_array.shape == (2, 32, 32, 3) and as_array.dtype == np.float32
    # The same decoded pixels: 8-bit PIL values are the floats rounded.
    assert np.abs(as_array * 255 - np.stack([np.asarray(i) for i in reference])).max() <= 0.5 + 1e-3

    codes = pipe("a red circle", num_images_per_prompt=2, generator=torch.Generator().manual_seed(7),
                 output_type="codes", progress=False, **SIZE).images
    expected = pipe.generate_codes(["a red circle"] * 2, 32, 32, pipe.settings(), [7, 8], progress=False)
    np.testing.assert_array_equal(codes, np.stack(expected))


def test_one_generator_per_image_sets_each_seed(pipe):
    generators = [torch.Generator().manual_seed(s) for s in (11, 3)]
    output = pipe(["a red circle", "a blue square"], generator=generators, output_type="codes", progress=False, **SIZE)
    # Decoded as one batch with the generators' seeds, as the call does (the same float computation).
    expected = pipe.generate_codes(["a red circle", "a blue square"], 32, 32, pipe.settings(), [11, 3], progress=False)
    np.testing.assert_array_equal(output.images, np.stack(expected))


@pytest.mark.parametrize("generator, message", [
    ([torch.Generator()], "got 1 generators for 2 images"),
    (7, "generator must be a torch.Generator or a list of one per image, got int"),
])
def test_bad_generators_are_refused(pipe, no_compute, generator, message):
    with pytest.raises(GenerationError, match=re.escape(message)):
        pipe("a red circle", num_images_per_prompt=2, generator=generator, **SIZE)


def test_bad_output_type_is_refused(pipe, no_compute):
    with pytest.raises(GenerationError, match="output_type must be one of pil, np, codes; got 'latent'"):
        pipe("a red circle", output_type="latent", **SIZE)


def test_callback_on_step_end_sees_every_row_of_every_batch_in_order(pipe):
    seen = []

    def callback(called_pipe, step, info):
        assert called_pipe is pipe
        seen.append((step, info["batch"], info["row"], info["rows"], info["images"], info["codes"].copy()))

    output = pipe("a red circle", num_images_per_prompt=3, batch_size=2, output_type="codes",
                  callback_on_step_end=callback, progress=False, **SIZE)
    rows = 4  # 32 px / 8 px per code
    assert [s[0] for s in seen] == list(range(2 * rows))
    assert [(s[1], s[2]) for s in seen] == [(b, r) for b in range(2) for r in range(rows)]
    assert all(s[3] == rows for s in seen)
    assert [s[4] for s in seen] == [[0, 1]] * rows + [[2]] * rows
    for step, batch, row, _, images, codes in seen:
        np.testing.assert_array_equal(codes, output.images[images][:, row])


def test_chat_is_refused_on_a_model_not_trained_for_it(pipe):
    draw_only = Pipeline(pipe.model, pipe.text_tokenizer, pipe.image_tokenizer, pipe.layout, pipe.defaults,
                         tasks=("text-to-image",))  # fmt: skip
    with pytest.raises(GenerationError, match="this model was not trained for 'chat' \\(its tasks: text-to-image\\)"):
        draw_only.chat(["what is this?"])
    with pytest.raises(GenerationError, match="this model was not trained for 'chat'"):
        pipe.chat(["what is this?"])  # the embedded model draws and may do the shapes tasks, never chat


def test_embedded_lumina_json_declares_its_tasks():
    layout, defaults, tasks = read_project_file(EMBEDDED_MODEL)
    assert tasks[0] == "text-to-image" and set(tasks) <= set(TASKS) - {"chat"}
    assert defaults.size == (64, 64) and layout.name == "compact"


def write_bad_project(tmp_path, edit) -> Path:
    meta = json.loads((EMBEDDED_MODEL / PROJECT_FILE).read_text())
    edit(meta)
    (tmp_path / PROJECT_FILE).write_text(json.dumps(meta))
    return tmp_path


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["defaults"].update(temperature="0.5"), 'defaults.temperature is a string ("0.5"), expected a number'),
    (lambda m: m["defaults"].update(image_top_k=12.5), "defaults.image_top_k is a number (12.5), expected an integer"),
    (lambda m: m["defaults"].update(size=[64]), "defaults.size is a list ([64]), expected a list of two integers"),
    (lambda m: m["defaults"].update(cfg=True), "defaults.cfg is a boolean (true), expected a number"),
    (lambda m: m["layout"].update(code_ids="441"), 'layout.code_ids is a string ("441"), expected a list of integers'),
    (lambda m: m["layout"].update(bos_id="0"), 'layout.bos_id is a string ("0"), expected an integer or null'),
    (lambda m: m.update(defaults=[]), '"defaults" is a list, expected an object'),
    (lambda m: m["defaults"].pop("cfg"), "defaults has missing ['cfg'], unknown []"),
    (lambda m: m["defaults"].update(temperature=-1), "temperature must be a finite number >= 0"),
    (lambda m: m["defaults"].update(size=[64, 70]), "image size 64x70 is not accepted"),
    (lambda m: m.update(tasks=["dance"]), "tasks is ['dance'], expected a non-empty list drawn from"),
    (lambda m: m["layout"].pop("pad_id"), "bad layout description: missing ['pad_id']"),
    (lambda m: m["defaults"].update(per_task={"edit": {"cfg": "1"}}), "defaults.per_task is an object"),
    (lambda m: m["defaults"].update(per_task={"dance": {"cfg": 1.0}}), "per_task has 'dance': {'cfg': 1.0}; accepted"),
    (lambda m: m["defaults"].update(per_task={"edit": {"top_p": 0.5}}), "each with some of ['cfg', 'temperature'"),
    (lambda m: m["defaults"].update(per_task={"edit": {"cfg": -2}}), "cfg must be a finite number >= 0"),
])
def test_lumina_json_with_wrong_fields_names_the_field(tmp_path, edit, message):
    folder = write_bad_project(tmp_path, edit)
    with pytest.raises((GenerationError, FormatError), match=re.escape(message)) as raised:
        read_project_file(folder)
    assert str(raised.value).startswith(str(folder / PROJECT_FILE))


def test_per_task_defaults_round_trip_through_lumina_json(tmp_path):
    layout, defaults, tasks = read_project_file(EMBEDDED_MODEL)
    plain = replace(defaults, per_task={})
    tuned = replace(defaults, per_task={"edit": {"cfg": 1.0, "temperature": 0.0}})
    write_project_file(tmp_path, layout, tuned, tasks)
    assert read_project_file(tmp_path)[1] == tuned
    assert tuned.for_task("edit") == replace(plain, cfg=1.0, temperature=0.0) and tuned.for_task("edges") == plain
    write_project_file(tmp_path, layout, plain, tasks)
    assert "per_task" not in json.loads((tmp_path / PROJECT_FILE).read_text())["defaults"]  # only when set


def test_lumina_json_that_is_not_json_is_refused(tmp_path):
    (tmp_path / PROJECT_FILE).write_text("{ layout: ")
    with pytest.raises(GenerationError, match="lumina.json is not valid JSON"):
        read_project_file(tmp_path)


def test_a_bad_lumina_json_is_refused_before_the_model_loads(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(EMBEDDED_MODEL, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    (folder / PROJECT_FILE).write_text(json.dumps({**json.loads((folder / PROJECT_FILE).read_text()), "tasks": "chat"}))
    # No weights in the folder: only a refusal that comes before loading them can name the tasks.
    with pytest.raises(GenerationError, match="tasks is 'chat'"):
        Pipeline.from_pretrained(folder, device="cpu")


def test_defaults_refuse_bad_values():
    with pytest.raises(GenerationError, match="image_top_k must be an integer >= 1"):
        Defaults(image_top_k=0, text_top_k=10, temperature=1.0, cfg=4.0, size=(64, 64))
    with pytest.raises(GenerationError, match="cfg must be a finite number"):
        Defaults(image_top_k=10, text_top_k=10, temperature=1.0, cfg=math.inf, size=(64, 64))


@pytest.mark.parametrize("device, message", [
    ("tpu9", "unknown device 'tpu9'; accepted: cpu, cuda, cuda:N or mps"),
    ("meta", "device type 'meta' is not supported"),
    ("cuda:99", "cuda:99"),
])
def test_devices_that_cannot_run_are_refused(device, message):
    with pytest.raises(GenerationError, match=re.escape(message)):
        resolve_device(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_refused():
    with pytest.raises(GenerationError, match="'cuda' needs a CUDA GPU, but torch sees none"):
        resolve_device("cuda")


def test_model_info_is_read_without_weights():
    info = read_model_info()
    assert info.folder == EMBEDDED_MODEL and info.tasks == read_project_file(EMBEDDED_MODEL)[2]
    assert info.image_tokenizer_path == EMBEDDED_MODEL / "image_tokenizer"


# ---------------------------------------------------------------------- writing PNGs
def picture(value: int) -> Image.Image:
    image = Image.new("RGB", (8, 8), (value, 0, 0))
    image.info["parameters"] = json.dumps({"value": value})
    return image


def red_of(path) -> int:
    with Image.open(path) as image:
        return image.getpixel((0, 0))[0]


@pytest.fixture(params=["hard links", "no hard links"])
def png_folder(request, tmp_path, monkeypatch):
    """A folder to save PNGs into, on a filesystem with or without hard links (os.link refused)."""
    if request.param == "no hard links":

        def refuse(*args, **kwargs):
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr("lumina_mgpt.generation.outputs.os.link", refuse)
    return tmp_path


def test_save_png_never_clobbers_without_overwrite(png_folder):
    assert save_png(picture(1), png_folder / "a.png") == png_folder / "a.png"
    assert save_png(picture(2), png_folder / "a.png") == png_folder / "a-1.png"
    assert save_png(picture(3), png_folder / "a.png") == png_folder / "a-2.png"
    assert [red_of(png_folder / n) for n in ("a.png", "a-1.png", "a-2.png")] == [1, 2, 3]
    assert save_png(picture(4), png_folder / "a.png", overwrite=True) == png_folder / "a.png"
    assert red_of(png_folder / "a.png") == 4
    with Image.open(png_folder / "a.png") as image:
        assert json.loads(image.text["parameters"]) == {"value": 4}
    assert sorted(p.name for p in png_folder.iterdir()) == ["a-1.png", "a-2.png", "a.png"]  # no temporaries


def test_writers_sharing_a_folder_and_names_lose_nothing(png_folder):
    writers, names = 4, 5
    errors = []

    def write(writer: int) -> None:
        try:
            for n in range(names):
                save_png(picture(writer * names + n), png_folder / f"{n:03d}-same.png")
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    files = sorted(png_folder.iterdir())
    assert all(f.suffix == ".png" and not f.name.startswith(".") for f in files)
    assert sorted(red_of(f) for f in files) == list(range(writers * names))


def test_a_full_disk_is_a_clear_error_that_keeps_finished_images(tmp_path, monkeypatch):
    out = OutputFolder(tmp_path)
    out.save(picture(1), "first.png")
    real_save = Image.Image.save

    def disk_full(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)  # a partial file, as when the disk fills mid-write
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    message = f"could not write second.png into {tmp_path}: No space left on device; the 1 image(s) written before it"
    with pytest.raises(GenerationError, match=re.escape(message)):
        out.save(picture(2), "second.png")
    assert [p.name for p in tmp_path.iterdir()] == ["first.png"]
    assert red_of(tmp_path / "first.png") == 1


def test_output_folder_checks(tmp_path):
    file = tmp_path / "file.png"
    file.write_bytes(b"")
    with pytest.raises(GenerationError, match=f"output folder {re.escape(str(file))} is a file"):
        check_output_folder(file)
    with pytest.raises(GenerationError, match="cannot write into output folder .*: Not a directory"):
        check_output_folder(file / "sub")
    assert check_output_folder(tmp_path / "new" / "deep").is_dir()
    assert list((tmp_path / "new" / "deep").iterdir()) == []  # the probe is gone


def test_read_only_output_folder_is_refused(tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; the refusal cannot be observed")
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(GenerationError, match="cannot write into output folder .*: Permission denied"):
            check_output_folder(folder)
    finally:
        folder.chmod(0o700)
