"""Linear weights packed for CPU decoding: same outputs, inference only, on by default in the Pipeline."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from model_fixtures import tiny_model
from torch import nn

from lumina_mgpt.errors import CheckpointError, GenerationError
from lumina_mgpt.formats import get_layout
from lumina_mgpt.generation.engine import Engine
from lumina_mgpt.generation.pipeline import Pipeline, make_settings
from lumina_mgpt.model import ModelConfig, PackedLinear, Transformer, pack_linear_weights, save_model
from lumina_mgpt.model.packing import can_pack
from lumina_mgpt.model_folder import Defaults

DTYPES = [torch.float32] + ([torch.bfloat16] if can_pack(torch.bfloat16) else [])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [False, True])
def test_a_packed_linear_computes_the_linear(dtype, bias):
    linear = nn.Linear(48, 80, bias=bias).to(dtype)
    packed = PackedLinear(linear)
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    with torch.no_grad():
        for shape in [(2, 48), (3, 5, 48), (1, 17, 48)]:  # decode rows, SJD windows, a prefill
            x = torch.randn(shape).to(dtype)
            torch.testing.assert_close(packed(x), linear(x), **tolerance)


def test_packing_replaces_every_block_linear_and_keeps_the_logits():
    model = tiny_model()
    reference = tiny_model()
    count = pack_linear_weights(model)
    layers = model.config.num_layers
    assert count == 7 * layers  # q, k, v, o, gate, up, down
    assert sum(isinstance(m, PackedLinear) for m in model.modules()) == count
    assert type(model.lm_head) is nn.Linear  # the engine takes rows of it
    ids = torch.randint(0, 512, (2, 6))
    with torch.no_grad():
        expected_cache, packed_cache = reference.new_cache(2, 16), model.new_cache(2, 16)
        torch.testing.assert_close(
            model.prefill(ids[:, :5], packed_cache, torch.tensor([5, 2])),
            reference.prefill(ids[:, :5], expected_cache, torch.tensor([5, 2])), atol=1e-5, rtol=1e-5,
        )
        torch.testing.assert_close(
            model.decode(ids[:, 5:], packed_cache), reference.decode(ids[:, 5:], expected_cache), atol=1e-5, rtol=1e-5
        )


def test_a_packed_model_refuses_to_be_saved_or_compiled():
    model = tiny_model()
    pack_linear_weights(model)
    with pytest.raises(CheckpointError, match="packed for CPU inference.*pack_weights=False"):
        model.state_dict()
    layout = get_layout("compact", text_vocab_size=400, codebook_size=16, downsample=8)
    with pytest.raises(GenerationError, match="packed for eager CPU decoding"):
        Engine(model, layout, compile_decode=True)


def test_packing_skips_weights_it_cannot_pack():
    model = tiny_model().to(torch.float16)  # oneDNN packs fp32 and bf16 only
    assert pack_linear_weights(model) == 0
    assert not any(isinstance(m, PackedLinear) for m in model.modules())


def test_a_packed_engine_draws_the_codes_of_an_unpacked_one():
    # Greedy codes from a sharpened head: packing moves the logits by ~1e-6 relative, far below the gap
    # between the best code and the next (a tie would need a gap ~1e4 times smaller than the typical one).
    layout = get_layout("compact", text_vocab_size=400, codebook_size=16, downsample=8)
    settings = make_settings(Defaults(image_top_k=1, text_top_k=10, temperature=1.0, cfg=3.0, size=(32, 32)))
    prompts = [[0, 5, 7, layout.separator_id], [0, 9, layout.separator_id]]
    grids = []
    for pack in (False, True):
        model = tiny_model(vocab_size=layout.vocab_size)
        with torch.no_grad():
            model.lm_head.weight.mul_(20)  # sharpen: logits far apart
        if pack:
            pack_linear_weights(model)
        grids.append(Engine(model, layout).generate_images(prompts, 32, 32, settings, [0, 1], progress=False))
    for unpacked, packed in zip(*grids):
        np.testing.assert_array_equal(unpacked, packed)


def test_the_pipeline_packs_on_cpu_by_default_and_can_be_told_not_to(tmp_path):
    packed = Pipeline.from_pretrained()
    assert any(isinstance(m, PackedLinear) for m in packed.model.modules())
    with pytest.raises(CheckpointError, match="pack_weights=False"):
        packed.save_pretrained(tmp_path / "copy")
    plain = Pipeline.from_pretrained(pack_weights=False)
    assert not any(isinstance(m, PackedLinear) for m in plain.model.modules())
    plain.save_pretrained(tmp_path / "copy")
    assert (tmp_path / "copy" / "model.safetensors").is_file()


_LOAD_PACK_AND_MEASURE = textwrap.dedent(
    """
    import sys
    import torch
    from lumina_mgpt.model import load_model, pack_linear_weights

    def resident_bytes():
        return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS:")).split()[1]) * 1024

    model = load_model(sys.argv[1])  # memory-mapped, fp32 as stored
    for p in model.parameters():
        p.detach().view(-1)[:: 4096 // p.element_size()].sum()  # fault every page in
    before = resident_bytes()
    assert pack_linear_weights(model) > 0
    print(resident_bytes() - before)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_packing_a_mapped_checkpoint_hands_the_mapped_pages_back(tmp_path):
    model = Transformer(ModelConfig(
        vocab_size=512, hidden_size=1024, intermediate_size=2816, num_layers=4, num_heads=8, num_kv_heads=8
    ))
    save_model(model, tmp_path)
    block_bytes = sum(p.numel() * 4 for p in model.model.layers.parameters())  # ~200 MB in fp32
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_PACK_AND_MEASURE, str(tmp_path)], capture_output=True, text=True, check=True
    )
    growth = int(result.stdout.strip().splitlines()[-1])
    # Without the hand-back the packed copies would add a whole second copy of the blocks.
    assert growth < 0.25 * block_bytes, (growth, block_bytes)


def test_a_small_model_decodes_on_one_thread_and_leaves_torch_as_it_was():
    layout = get_layout("compact", text_vocab_size=400, codebook_size=16, downsample=8)
    engine = Engine(tiny_model(vocab_size=layout.vocab_size), layout)
    assert engine.decode_threads == 1
    seen = []
    settings = make_settings(Defaults(image_top_k=4, text_top_k=10, temperature=1.0, cfg=3.0, size=(32, 32)))
    before = torch.get_num_threads()
    engine.generate_images(
        [[0, 5, layout.separator_id]], 32, 32, settings, [0], progress=False,
        on_step=lambda output: seen.append(torch.get_num_threads()),
    )
    assert set(seen) == {1}
    assert torch.get_num_threads() == before
