"""Weight-only quantization through torchao: what is quantized, int8 accuracy, composition with SJD,
the CLI and pipeline options, and the refusal of int4 where it cannot run."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lumina_mgpt.errors import CheckpointError
from lumina_mgpt.formats import ImageSegment, get_layout, grid_shape, parse
from lumina_mgpt.generation.engine import Engine, GenerationSettings
from lumina_mgpt.generation.sampling import SamplingSettings
from lumina_mgpt.model import ModelConfig, Transformer, quantize_model


@pytest.fixture(scope="module")
def layout():
    return get_layout("compact", text_vocab_size=48, codebook_size=40, downsample=16, max_indicator=8)


def model_of(layout, preset="tiny", dtype=torch.float32, device="cpu", **shape):
    torch.manual_seed(0)
    config = ModelConfig.preset(preset, vocab_size=layout.vocab_size, max_position_embeddings=256, **shape)
    return Transformer(config).to(device=device, dtype=dtype).eval()


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return float((approx.float() - exact.float()).norm() / exact.float().norm())


def test_int8_quantizes_the_block_linears_only(layout):
    from torchao.quantization import Int8Tensor

    model = quantize_model(model_of(layout), "int8")
    for name, parameter in model.named_parameters():
        in_block_linear = name.startswith("model.layers.") and name.endswith("_proj.weight")
        assert isinstance(parameter.data, Int8Tensor) == in_block_linear, name
    assert sum(name.endswith("_proj.weight") for name, _ in model.named_parameters()) == 2 * 7


def test_int8_logits_are_within_one_percent_of_fp32(layout):
    """||int8 - fp32|| / ||fp32|| over the logits of a batch of random sequences, full forward and cached decode."""
    reference = model_of(layout)
    quantized = quantize_model(model_of(layout), "int8")
    ids = torch.randint(0, layout.vocab_size, (4, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        exact = reference(ids)
        assert relative_error(quantized(ids), exact) < 0.01
        cache = quantized.new_cache(4, 48)
        quantized.prefill(ids[:, :30], cache, torch.full((4,), 30))
        assert relative_error(quantized.decode(ids[:, 30:], cache), exact[:, 30:]) < 0.01


def test_int8_composes_with_sjd(layout):
    """A quantized model under SJD: greedy SJD equals greedy plain decoding, images parse."""
    model = quantize_model(model_of(layout), "int8")
    with torch.no_grad():
        model.lm_head.weight.mul_(40)
    engine = Engine(model, layout)
    settings = GenerationSettings(image=SamplingSettings(temperature=0.0), cfg=3.0)
    prompts = [[1, 2, 3, layout.separator_id], [7, layout.separator_id]]
    plain = engine.generate_images(prompts, 96, 96, settings, [0, 1], progress=False)
    sjd = engine.generate_images(prompts, 96, 96, settings, [0, 1], progress=False, sjd_window=8)
    np.testing.assert_array_equal(np.stack(sjd), np.stack(plain))
    assert engine.last_stats.forwards < engine.last_stats.tokens


def test_int4_on_cpu_and_unknown_modes_are_refused(layout):
    with pytest.raises(CheckpointError, match="int4 weight-only quantization needs CUDA.*int8 works on CPU"):
        quantize_model(model_of(layout), "int4")
    with pytest.raises(CheckpointError, match="unknown quantization 'fp8'; accepted: int8 .* or int4"):
        quantize_model(model_of(layout), "fp8")


def test_pipeline_and_cli_quantize_and_speculate(tmp_path):
    from lumina_mgpt.cli import main
    from lumina_mgpt.demo import untrained_shapes_pipeline
    from lumina_mgpt.generation.pipeline import Pipeline

    untrained_shapes_pipeline(tmp_path / "model", seed=0)
    with pytest.raises(CheckpointError, match="needs CUDA"):
        Pipeline.from_pretrained(tmp_path / "model", device="cpu", quant="int4")
    code = main(["generate", "a red circle", "--model", str(tmp_path / "model"), "--width", "32", "--height", "32",
                 "--sjd-window", "4", "--quant", "int8", "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert code == 0
    (file,) = (tmp_path / "out").glob("*.png")
    with Image.open(file) as image:
        assert image.size == (32, 32) and json.loads(image.text["parameters"])["sjd_window"] == 4
    code = main(["generate", "a red circle", "--model", str(tmp_path / "model"), "--quant", "int4", "--device", "cpu",
                 "--out", str(tmp_path / "out")])
    assert code == 2


@pytest.mark.gpu
def test_int4_on_cuda_runs_compiled_with_sjd(layout):
    """int4 (group 128) on CUDA in bfloat16: the block linears are packed, logits stay within 30% of bf16's
    (random weights lose ~10% per weight at 4 bits; a wrong packing gives ~100%), and the compiled engine
    decodes complete images with SJD."""
    from torchao.quantization import Int4TilePackedTo4dTensor

    shape = dict(hidden_size=256, intermediate_size=512, num_heads=2, num_kv_heads=2)
    reference = model_of(layout, dtype=torch.bfloat16, device="cuda", **shape)
    model = quantize_model(model_of(layout, dtype=torch.bfloat16, device="cuda", **shape), "int4")
    assert isinstance(model.model.layers[0].mlp.up_proj.weight.data, Int4TilePackedTo4dTensor)
    ids = torch.randint(0, layout.vocab_size, (2, 32), device="cuda")
    with torch.no_grad():
        assert relative_error(model(ids), reference(ids)) < 0.3
    engine = Engine(model, layout, compile_decode=True)
    settings = GenerationSettings(image=SamplingSettings(temperature=1.0, top_k=10), cfg=3.0)
    prompts = [[1, 2, layout.separator_id], [4, 5, 6, layout.separator_id]]
    grids = engine.generate_images(prompts, 64, 32, settings, [0, 1], progress=False, sjd_window=4)
    header = [layout.start_image_id, layout.size_indicator_ids[1], layout.size_indicator_ids[2]]
    for prompt, grid in zip(prompts, grids):
        assert grid.shape == grid_shape(64, 32, layout)
        body = np.concatenate([np.append(layout.codes_to_ids(row), layout.end_line_id) for row in grid])
        (*_, image) = parse(np.concatenate([prompt, header, body, [layout.end_image_id]]), layout)
        assert isinstance(image, ImageSegment) and image.complete
