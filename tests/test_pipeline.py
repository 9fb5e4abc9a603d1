"""Pipeline.from_pretrained on official-style folders and project folders, end to end, and the CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from model_fixtures import TINY_VQ_CONFIG
from PIL import Image
from vision_fixtures import chameleon_yaml, official_state_dict
from vocab_fixtures import chameleon_like_tokenizer, qwen_like_tokenizer

from lumina_mgpt.errors import GenerationError, TokenizerError
from lumina_mgpt.generation.outputs import save_png
from lumina_mgpt.generation.pipeline import Pipeline
from lumina_mgpt.model_folder import TASKS


def official_folder(root: Path, family: str) -> Path:
    """An official-style release: a transformers Chameleon folder with the family's vocabulary size and
    tokenizer, and the image tokenizer checkpoint beside it under its official file name."""
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    vocab_size = {"v1": 65536, "v2": 171385}[family]
    folder = root / f"Lumina-mGPT-{family}"
    torch.manual_seed(0)
    config = ChameleonConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, vocabulary_map={"<image>": 3}, vq_config=TINY_VQ_CONFIG, max_position_embeddings=512,
    )
    ChameleonForConditionalGeneration(config).eval().save_pretrained(folder)
    if family == "v1":
        chameleon_like_tokenizer(folder)
        state = official_state_dict("chameleon", width_divisor=4)
        (root / "tokenizer").mkdir()
        torch.save({"state_dict": state}, root / "tokenizer" / "vqgan.ckpt")
        (root / "tokenizer" / "vqgan.yaml").write_text(chameleon_yaml(state))
    else:
        qwen_like_tokenizer(folder)
        torch.save(official_state_dict("movqgan", width_divisor=4), root / "movqgan_270M.ckpt")
    return folder


@pytest.mark.parametrize("family, size, grid", [("v1", (64, 32), (2, 4)), ("v2", (64, 32), (4, 8))])
def test_official_folder_generates_images_of_the_requested_size(tmp_path, family, size, grid):
    folder = official_folder(tmp_path, family)
    pipe = Pipeline.from_pretrained(folder, device="cpu")
    assert pipe.layout.name == {"v1": "lumina-mgpt", "v2": "lumina-mgpt-2"}[family]
    assert pipe.defaults.image_top_k == {"v1": 2000, "v2": 4096}[family]
    assert pipe.tasks == {"v1": ("text-to-image", "chat"), "v2": ("text-to-image",)}[family]
    # Official v2 plain decoding decays its guidance; v1 keeps it constant (docs/FORMATS.md).
    schedule = {"v1": "constant", "v2": "decay-to-4"}[family]
    assert pipe.defaults.cfg_schedule == pipe.settings().cfg_schedule == schedule
    assert pipe.settings(cfg_schedule="constant").cfg_schedule == "constant"
    if family == "v2":
        with pytest.raises(GenerationError, match="not trained for 'chat'"):
            pipe.chat(["hello"])
    width, height = size
    codes = pipe.generate_codes(["a cat"], width, height, pipe.settings(), seeds=[0], progress=False)
    assert codes[0].shape == grid and codes[0].min() >= 0 and codes[0].max() < pipe.layout.codebook_size
    (image,) = pipe.generate("a cat", width=width, height=height, seed=0, progress=False)
    assert image.size == size
    np.testing.assert_array_equal(np.asarray(image), np.asarray(pipe.image_tokenizer.decode_to_pil(
        torch.as_tensor(codes[0])[None])[0]))


def test_project_folder_round_trip_and_png_metadata(tmp_path):
    from lumina_mgpt.demo import untrained_shapes_pipeline

    pipe = untrained_shapes_pipeline(tmp_path / "model", seed=0)
    again = Pipeline.from_pretrained(tmp_path / "model", device="cpu")
    a = pipe.generate(["a red circle"], width=64, height=32, seed=3, progress=False)[0]
    b = again.generate(["a red circle"], width=64, height=32, seed=3, progress=False)[0]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    save_png(a, tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as loaded:
        meta = json.loads(loaded.text["parameters"])
    assert meta["prompt"] == "a red circle" and meta["seed"] == 3 and meta["width"] == 64 and meta["cfg"] == 4.0
    assert meta["cfg_schedule"] == again.defaults.cfg_schedule == "constant"


def test_cli_generate_writes_pngs(tmp_path):
    from lumina_mgpt.cli import main
    from lumina_mgpt.demo import untrained_shapes_pipeline

    untrained_shapes_pipeline(tmp_path / "model", seed=0)
    code = main(["generate", "a blue square", "two red circles", "--model", str(tmp_path / "model"), "--width", "48",
                 "--height", "96", "-n", "2", "--seed", "5", "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert code == 0
    files = sorted((tmp_path / "out").glob("*.png"))
    assert len(files) == 4
    for i, file in enumerate(files):
        with Image.open(file) as image:
            assert image.size == (48, 96)
            assert json.loads(image.text["parameters"])["seed"] == 5 + i


def test_folder_without_model_or_tokenizer_is_refused(tmp_path):
    with pytest.raises(GenerationError, match="config.json is missing"):
        Pipeline.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 1234}))
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        Pipeline.from_pretrained(tmp_path)


def test_chat_returns_text_and_the_images_the_answer_opens(tmp_path):
    from lumina_mgpt.demo import untrained_shapes_pipeline

    loaded = untrained_shapes_pipeline(tmp_path / "model", seed=0)
    # A random model learned nothing; declaring chat here tests the decoding path, not the model.
    pipe = Pipeline(loaded.model, loaded.text_tokenizer, loaded.image_tokenizer, loaded.layout, loaded.defaults,
                    tasks=TASKS)
    reply = pipe.chat(["what is this? <|image|>"], images=[Image.new("RGB", (70, 50), "red")], max_new_tokens=8)
    assert isinstance(reply.text, str) and reply.images == []
    # Make the model open an image at once: the answer is one 32x32 image, then a cut-off second one.
    pipe.engine.text_bias[pipe.layout.start_image_id] = 1e4
    reply = pipe.chat(["draw"], max_new_tokens=30, image_size=(32, 32))
    assert reply.text.startswith("<|image|>")
    assert reply.images[0].size == (32, 32)
