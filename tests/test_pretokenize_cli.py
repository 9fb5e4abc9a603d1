"""`lumina pretokenize` on the embedded model: what the model supplies, over-long samples, and the
image tokenizer's round-trip PSNR on the data."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lumina_mgpt.cli import main
from lumina_mgpt.data import TokenDataset
from lumina_mgpt.data.manifest import read_manifest
from lumina_mgpt.data.pretokenizer import POOR_RECONSTRUCTION_DB
from lumina_mgpt.model_folder import EMBEDDED_MODEL, PROJECT_FILE
from lumina_mgpt.shapes.dataset import write_dataset


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def renders(tmp_path_factory) -> Path:
    """Six 64 px shapes-world renders with their captions (records.jsonl)."""
    return write_dataset(tmp_path_factory.mktemp("renders"), 6, seed=11, sizes=((64, 64),), progress=False)


def test_the_embedded_model_supplies_tokenizers_layout_target_size_and_limit(renders, tmp_path, capsys):
    out = tmp_path / "tokens"
    assert main(["pretokenize", str(renders), "--out", str(out), "--device", "cpu"]) == 0
    manifest = read_manifest(out)
    assert manifest["layout"] == json.loads((EMBEDDED_MODEL / PROJECT_FILE).read_text())["layout"]
    assert manifest["settings"]["target_size"] == 64  # the model's image size, not the 512 px of official models
    assert manifest["settings"]["max_seq_len"] == 4096  # config.json's max_position_embeddings
    assert manifest["counts"]["records"] == 6 and manifest["too_long"] == 0
    # 64 px images at 8x downsampling: 8 rows of 8 codes and an end-of-line each, plus the block's markers.
    dataset = TokenDataset(out)
    assert all(np.count_nonzero(np.isin(dataset[i].ids, manifest["layout"]["code_ids"])) == 64 for i in range(6))
    measured = manifest["reconstruction"]
    assert measured["images"] == 6 and measured["psnr"] > POOR_RECONSTRUCTION_DB  # its own kind of images
    printed = capsys.readouterr().out
    assert "6 records (0 skipped, 0 of them over 4096 tokens)" in printed and "at target size 64" in printed
    assert f"round trip on the first 6 images: {measured['psnr']:.1f} dB PSNR (fine; below 20 dB is poor)" in printed


def test_samples_over_max_seq_len_are_skipped_and_counted(renders, tmp_path, capsys):
    records = [json.loads(line) for line in renders.read_text().splitlines()]
    records[2]["prompt"] = " ".join(["a red circle above a blue square"] * 200)  # thousands of tokens
    source = renders.parent / "with-a-huge-caption.jsonl"
    source.write_text("".join(json.dumps(record) + "\n" for record in records))
    out = tmp_path / "tokens"
    argv = ["pretokenize", str(source), "--out", str(out), "--max-seq-len", "300", "--max-bad-share", "0.2"]
    assert main(argv + ["--device", "cpu"]) == 0
    manifest = read_manifest(out)
    assert manifest["counts"]["records"] == 5 and manifest["counts"]["skipped"] == 1 and manifest["too_long"] == 1
    (skipped,) = manifest["skipped_records"]
    assert skipped["source_id"] == f"{source}:3" and skipped["reason"].endswith("tokens, more than max_seq_len 300")
    assert max(TokenDataset(out).lengths) <= 300
    assert "5 records (1 skipped, 1 of them over 300 tokens)" in capsys.readouterr().out


def strokes(seed: int) -> Image.Image:
    """Black pen strokes on white: nothing like the shapes world the embedded tokenizer was made for."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (64, 64), "white")
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        draw.line([tuple(rng.integers(0, 64, 2).tolist()) for _ in range(3)], fill="black", width=2)
    return image


def test_a_poor_image_tokenizer_round_trip_is_warned_about(tmp_path, caplog, capsys):
    for number in range(4):
        strokes(number).save(tmp_path / f"{number}.png")
    source = tmp_path / "strokes.jsonl"
    source.write_text("".join(json.dumps({"image": f"{n}.png", "prompt": "a sketch"}) + "\n" for n in range(4)))
    with caplog.at_level(logging.WARNING):
        assert main(["pretokenize", str(source), "--out", str(tmp_path / "tokens"), "--device", "cpu"]) == 0
    psnr = read_manifest(tmp_path / "tokens")["reconstruction"]["psnr"]
    assert psnr < POOR_RECONSTRUCTION_DB
    assert f"the image tokenizer reconstructs these images poorly: {psnr:.1f} dB PSNR on the first 4" in caplog.text
    assert "(poor; below 20 dB is poor)" in capsys.readouterr().out


def test_a_model_keeps_its_own_tokenizer_and_layout(renders, tmp_path, capsys):
    argv = ["pretokenize", str(renders), "--out", str(tmp_path / "tokens"), "--layout", "compact"]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        "lumina pretokenize: error: --layout cannot replace a model's own (its ids depend on them); give "
        "--tokenizer, --image-tokenizer and --layout without --model, or a --model alone"
    )
    assert not (tmp_path / "tokens").exists()
