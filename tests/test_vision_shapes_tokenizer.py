"""The multi-task shapes image tokenizer: a patch-local decoder, training on distinct patches, and the
task world's training canvases."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from lumina_mgpt.errors import DataError, ImageTokenizerError
from lumina_mgpt.shapes import vq_images
from lumina_mgpt.shapes.dual_panel import EDGE_INK, SEGMENTATION_COLORS
from lumina_mgpt.shapes.spec import COLORS
from lumina_mgpt.shapes.tasks import TASKS, eval_items
from lumina_mgpt.shapes.vq_images import SOURCES, record_canvas, tokenizer_training_images, train_task_image_tokenizer
from lumina_mgpt.shapes.world import CANVAS_SIZES, PLAIN_BACKGROUND
from lumina_mgpt.vision import ImageTokenizer
from lumina_mgpt.vision.config import VQConfig, preset
from lumina_mgpt.vision.data import distinct_patches
from lumina_mgpt.vision.quantize import nearest_codes
from lumina_mgpt.vision.train import TrainSettings, VQTrainer, keep_used_codes

LOCAL = VQConfig(
    family="vq", block_out_channels=(32, 32), layers_per_block=1, latent_channels=4, embed_dim=4,
    codebook_size=64, mid_attention=False, patch_local=True, patch_local_decoder=True,
)  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_patch_local_decoder_draws_each_patch_from_its_own_code_alone():
    torch.manual_seed(0)
    tokenizer = ImageTokenizer(LOCAL).eval()
    d = tokenizer.downsample
    codes = torch.randint(LOCAL.codebook_size, (2, 3, 4))
    other = torch.randint(LOCAL.codebook_size, (2, 3, 4))
    other[:, 1, 2] = codes[:, 1, 2]  # the same code in new surroundings
    image, changed = tokenizer.decode(codes), tokenizer.decode(other)
    assert image.shape == (2, 3, 3 * d, 4 * d)
    patch = (slice(None), slice(None), slice(d, 2 * d), slice(2 * d, 3 * d))
    torch.testing.assert_close(image[patch], changed[patch], rtol=1e-5, atol=1e-5)
    # Any rows of a grid (a dual panel's lower half) decode as they do inside the whole grid.
    torch.testing.assert_close(tokenizer.decode(codes[:, 1:]), image[:, :, d:], rtol=1e-5, atol=1e-5)
    # Repeated codes are decoded once; the result equals the gradient path, which decodes every cell.
    latents = tokenizer.codebook[codes].permute(0, 3, 1, 2)
    every_cell = tokenizer.decode_latents(latents.detach().requires_grad_(True)).detach()
    torch.testing.assert_close(every_cell.clamp(-1, 1), image, rtol=1e-5, atol=1e-5)


def test_the_ordinary_decoder_mixes_neighbouring_codes():
    torch.manual_seed(0)
    tokenizer = ImageTokenizer(dataclasses.replace(LOCAL, patch_local_decoder=False)).eval()
    d = tokenizer.downsample
    codes = torch.randint(LOCAL.codebook_size, (1, 3, 4))
    other = codes.clone()
    other[:, 1, 1] = (codes[:, 1, 1] + 1) % LOCAL.codebook_size
    image, changed = tokenizer.decode(codes), tokenizer.decode(other)
    assert not torch.allclose(image[..., d : 2 * d, 2 * d : 3 * d], changed[..., d : 2 * d, 2 * d : 3 * d])


def test_configs_without_the_decoder_flag_load_as_ordinary_decoders(tmp_path):
    data = preset("shapes").to_dict()
    del data["patch_local_decoder"]  # as in folders written before the flag existed
    assert VQConfig.from_dict(data) == preset("shapes")
    assert preset("shapes-tasks").patch_local_decoder and preset("shapes-tasks").codebook_size == 2048
    tokenizer = ImageTokenizer(LOCAL)
    tokenizer.save_pretrained(tmp_path)
    assert ImageTokenizer.from_pretrained(tmp_path).config == LOCAL


def test_distinct_patches_lists_each_grid_patch_once_in_a_fixed_order():
    red, blue = (220, 40, 40), (40, 80, 225)
    first = np.full((16, 24, 3), 200, dtype=np.uint8)
    first[:8, 8:16] = red
    second = np.full((8, 16, 3), 200, dtype=np.uint8)
    second[:] = blue
    second[0, 8] = red  # differs from the blue patch by one pixel: a patch of its own
    images = [Image.fromarray(first), Image.fromarray(second)]
    patches = distinct_patches(images, 8)
    assert patches.shape == (4, 3, 8, 8)  # gray, red, blue, blue with a red pixel
    assert patches.min() >= -1 and patches.max() <= 1
    colors = {tuple(((p[:, 4, 4] + 1) * 127.5).round().int().tolist()) for p in patches}
    assert colors == {(200, 200, 200), red, blue}
    assert torch.equal(distinct_patches(images[::-1], 8), patches)
    with pytest.raises(ImageTokenizerError, match="multiples of 8 px, got sizes \\[\\(12, 8\\)\\]"):
        distinct_patches([Image.new("RGB", (12, 8))], 8)
    with pytest.raises(ImageTokenizerError, match="multiples of 8 px"):
        distinct_patches([], 8)


def test_a_local_tokenizer_trained_on_patches_codes_whole_images(tmp_path):
    torch.manual_seed(0)
    flat = [
        np.full((8, 8, 3), value, dtype=np.uint8) for value in ((0, 0, 0), (220, 40, 40), (40, 80, 225), (224,) * 3)
    ]
    image = np.concatenate([np.concatenate(flat[:2], axis=1), np.concatenate(flat[2:], axis=1)], axis=0)
    patches = distinct_patches([Image.fromarray(image)], LOCAL.downsample)
    assert patches.shape[0] == 4
    settings = TrainSettings(steps=200, batch_size=4, autoencoder_warmup=100, kmeans_samples=16, save_every=200)
    history = VQTrainer(ImageTokenizer(LOCAL), patches, settings, tmp_path).run(progress=False)
    assert history[-1]["reconstruction"] < history[0]["reconstruction"] / 4
    tokenizer = ImageTokenizer.from_pretrained(tmp_path)
    codes = tokenizer.encode([Image.fromarray(image)])
    assert len(set(codes.flatten().tolist())) == 4  # one code per distinct patch
    decoded = np.asarray(tokenizer.decode_to_pil(codes)[0], dtype=np.float64)
    assert np.abs(decoded - image).mean() < 25


def test_keeping_the_used_codes_drops_the_others_and_changes_nothing_else(tmp_path):
    torch.manual_seed(0)
    tokenizer = ImageTokenizer(LOCAL).eval()
    with torch.no_grad():  # codes spread over the latents of random pixels, as after training
        latents = tokenizer.encode_latents(torch.rand(4, 3, 8, 8) * 2 - 1)
        tokenizer.codebook.copy_(latents.permute(0, 2, 3, 1).reshape(-1, LOCAL.embed_dim))
    pixels = torch.rand(3, 3, 4, 6) * 2 - 1
    codes = tokenizer.encode(pixels)
    used = torch.unique(codes)
    assert 1 < used.numel() < LOCAL.codebook_size
    pruned = keep_used_codes(tokenizer, pixels, batch_size=2)
    assert pruned.codebook_size == used.numel()
    renumbered = torch.searchsorted(used, codes)  # the kept codes in their old order
    assert torch.equal(pruned.encode(pixels), renumbered)
    torch.testing.assert_close(pruned.decode(renumbered), tokenizer.decode(codes), rtol=0, atol=0)
    # A latent whose nearest code was dropped goes to its nearest kept one.
    other = torch.rand(2, 3, 4, 6) * 2 - 1
    expected = nearest_codes(tokenizer.encode_latents(other), tokenizer.codebook[used])
    assert torch.equal(pruned.encode(other), expected)
    pruned.save_pretrained(tmp_path)
    assert ImageTokenizer.from_pretrained(tmp_path).config.codebook_size == used.numel()


def test_training_canvases_cover_every_source_deterministically():
    images = tokenizer_training_images(2 * len(SOURCES), seed=0)
    assert len(images) == 2 * len(SOURCES)
    assert {image.size for image in images} <= set(CANVAS_SIZES)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(images, tokenizer_training_images(2 * len(SOURCES), 0)))
    assert tokenizer_training_images(3, seed=1)[0].tobytes() != images[0].tobytes()
    # Both sources of one task read different records; no canvas repeats.
    assert len({image.tobytes() for image in images}) == len(images)
    colors = set()
    for image in images:
        colors |= {tuple(c) for c in np.asarray(image).reshape(-1, 3)}
    assert set(COLORS.values()) | set(SEGMENTATION_COLORS.values()) | {EDGE_INK} <= colors
    # The maps are there as canvases of their own: pure background and ink, or pure class colors.
    edge_maps = [
        i for i in images if {tuple(c) for c in np.asarray(i).reshape(-1, 3)} == {PLAIN_BACKGROUND.color, EDGE_INK}
    ]
    assert edge_maps
    with pytest.raises(DataError, match="positive image count"):
        tokenizer_training_images(0, seed=0)


def test_training_canvases_are_no_evaluation_inputs_or_outputs():
    training = {image.tobytes() for image in tokenizer_training_images(3 * len(SOURCES), seed=0)}
    for task in ("edit_move", "subject", "segmentation"):
        for item in eval_items(task, 5, seed=0):
            assert item.image.tobytes() not in training


@pytest.mark.parametrize("task, panel", [("edit_add", 0), ("edit_add", 1), ("text_to_image", 0)])
def test_record_canvas_takes_one_panel_of_a_dual_panel(task, panel):
    canvas = record_canvas(task, panel, seed=0, index=3)
    if TASKS[task].dual_panel:
        assert canvas.size == (64, 64)
    else:
        assert canvas.size in CANVAS_SIZES


def test_the_recipe_resumes_from_its_work_folder_and_saves_only_used_codes(tmp_path, monkeypatch):
    """A shortened recipe: stopped after 3 steps and run again, it ends where one uninterrupted run does."""
    monkeypatch.setattr(vq_images, "TASK_TOKENIZER_IMAGES", 15)
    steps = {"value": 6}

    def settings(seed):
        return TrainSettings(
            steps=steps["value"], batch_size=16, autoencoder_warmup=2, kmeans_samples=64, save_every=3, seed=seed
        )

    monkeypatch.setattr(vq_images, "task_tokenizer_settings", settings)
    train_task_image_tokenizer(tmp_path / "whole", tmp_path / "whole-work", seed=0)
    steps["value"] = 3
    train_task_image_tokenizer(tmp_path / "part", tmp_path / "work", seed=0)
    steps["value"] = 6
    train_task_image_tokenizer(tmp_path / "resumed", tmp_path / "work", seed=0)
    whole, resumed = (
        ImageTokenizer.from_pretrained(tmp_path / "whole"),
        ImageTokenizer.from_pretrained(tmp_path / "resumed"),
    )
    assert whole.config == resumed.config
    assert whole.codebook_size < preset("shapes-tasks").codebook_size  # the unused codes are gone
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
