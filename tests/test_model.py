"""Transformer behaviour: config mapping, KV-cache decoding vs full forwards, rollback, loss, dropout, checkpointing."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from lumina_mgpt.errors import CheckpointError
from lumina_mgpt.model import PRESET_NAMES, ModelConfig, Transformer, enable_activation_checkpointing
from model_fixtures import tiny_model


def full_next_logits(model: Transformer, ids: torch.Tensor) -> torch.Tensor:
    """Logits of the last position from a plain full forward (the reference for every cache test)."""
    with torch.no_grad():
        return model(ids)[:, -1]


# ---- config -------------------------------------------------------------------------------------


def test_presets_build_and_count_parameters():
    for name in PRESET_NAMES:
        config = ModelConfig.preset(name, vocab_size=1000) if name == "shapes" else ModelConfig.preset(name)
        with torch.device("meta"):
            model = Transformer(config)
        assert sum(p.numel() for p in model.parameters()) == config.num_parameters, name
    assert round(ModelConfig.preset("lumina-mgpt-7b").num_parameters / 1e9, 2) == 7.01
    assert 6e6 < ModelConfig.preset("shapes", vocab_size=1000).num_parameters < 10e6


def test_preset_overrides_and_errors():
    config = ModelConfig.preset("shapes", vocab_size=300, num_layers=2)
    assert (config.vocab_size, config.num_layers, config.qk_norm_rows) == (300, 2, 8)
    with pytest.raises(CheckpointError, match="vocab_size"):
        ModelConfig.preset("shapes")
    with pytest.raises(CheckpointError, match="unknown model preset 'huge'.*tiny"):
        ModelConfig.preset("huge")
    with pytest.raises(CheckpointError, match="unknown ModelConfig fields.*colour"):
        ModelConfig.preset("tiny", colour="red")
    with pytest.raises(CheckpointError, match="num_kv_heads=3"):
        ModelConfig.preset("tiny", num_kv_heads=3)


def test_hf_config_round_trip_keeps_extras():
    config = ModelConfig.preset("lumina-mgpt-34b", hf_extras={"vocabulary_map": {"<image>": 8711}, "bos_token_id": 0})
    hf = config.to_hf_config()
    assert hf["model_type"] == "chameleon" and hf["model_parallel_size"] == 4 and hf["swin_norm"] is True
    assert hf["num_hidden_layers"] == 48 and hf["num_key_value_heads"] == 8
    assert ModelConfig.from_hf_config(hf) == config


def test_hf_config_reads_legacy_and_recent_rope_fields():
    base = ModelConfig.preset("tiny").to_hf_config()
    legacy = {k: v for k, v in base.items() if k != "rope_parameters"} | {"rope_theta": 123.0}
    assert ModelConfig.from_hf_config(legacy).rope_theta == 123.0
    recent = {k: v for k, v in base.items() if k not in ("rope_theta", "rope_scaling")}
    recent["rope_parameters"] = {"rope_type": "default", "rope_theta": 77.0}
    assert ModelConfig.from_hf_config(recent).rope_theta == 77.0


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("rope_scaling", {"type": "linear", "factor": 2.0}, "rope_scaling"),
        ("rope_parameters", {"rope_type": "yarn", "factor": 4.0}, "rope_parameters.*yarn"),
        ("hidden_act", "gelu", "hidden_act='gelu'.*'silu'"),
        ("tie_word_embeddings", True, "tie_word_embeddings"),
        ("attention_bias", True, "attention_bias"),
        ("head_dim", 32, "head_dim=32"),
    ],
)
def test_unsupported_hf_fields_are_named(field, value, message):
    hf = ModelConfig.preset("tiny").to_hf_config() | {field: value}
    with pytest.raises(CheckpointError, match=message):
        ModelConfig.from_hf_config(hf)


# ---- KV cache -----------------------------------------------------------------------------------


@pytest.mark.parametrize("swin_norm", [False, True])
def test_greedy_decoding_with_cache_equals_full_forwards(swin_norm):
    model = tiny_model(swin_norm=swin_norm)
    ids = torch.randint(0, 512, (1, 7))
    cache = model.new_cache(1, 64)
    with torch.no_grad():
        logits = model.prefill(ids, cache, torch.tensor([7]))
        for _ in range(32):
            torch.testing.assert_close(logits, full_next_logits(model, ids), rtol=1e-5, atol=1e-5)
            next_token = logits.argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_token], dim=1)
            logits = model.decode(next_token, cache)[:, -1]
    assert cache.lengths.tolist() == [39]


def test_left_padded_rows_equal_each_row_alone():
    model = tiny_model()
    lengths = [5, 9, 2]
    prompts = [torch.randint(1, 512, (n,)) for n in lengths]
    padded = torch.zeros(3, 9, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        padded[row, 9 - len(prompt) :] = prompt
    cache = model.new_cache(3, 32)
    continuation = torch.randint(0, 512, (3, 4))
    with torch.no_grad():
        first = model.prefill(padded, cache, torch.tensor(lengths))
        steps = [model.decode(continuation[:, i : i + 1], cache)[:, 0] for i in range(2)]
        block = model.decode(continuation[:, 2:], cache)
    for row, prompt in enumerate(prompts):
        alone = prompt[None]
        torch.testing.assert_close(first[row], full_next_logits(model, alone)[0], rtol=1e-5, atol=1e-5)
        for i in range(4):
            alone = torch.cat([alone, continuation[row : row + 1, i : i + 1]], dim=1)
            got = steps[i][row] if i < 2 else block[row, i - 2]
            torch.testing.assert_close(got, full_next_logits(model, alone)[0], rtol=1e-5, atol=1e-5)


def test_multi_token_decode_is_causal_within_the_block():
    model = tiny_model()
    ids = torch.randint(0, 512, (2, 12))
    cache = model.new_cache(2, 16)
    with torch.no_grad():
        model.prefill(ids[:, :6], cache, torch.tensor([6, 6]))
        block = model.decode(ids[:, 6:], cache)
        full = model(ids)
    torch.testing.assert_close(block, full[:, 6:], rtol=1e-5, atol=1e-5)


def test_rollback_equals_never_having_decoded():
    model = tiny_model(num_kv_heads=4)
    prompt = torch.randint(0, 512, (2, 6))
    drafted = torch.randint(0, 512, (2, 5))
    accepted, fresh = drafted[:, :2], torch.randint(0, 512, (2, 3))
    with torch.no_grad():
        cache = model.new_cache(2, 32)
        model.prefill(prompt, cache, torch.tensor([6, 6]))
        model.decode(drafted, cache)
        cache.rollback(3)
        after_rollback = model.decode(fresh, cache)

        clean = model.new_cache(2, 32)
        model.prefill(prompt, clean, torch.tensor([6, 6]))
        model.decode(accepted, clean)
        reference = model.decode(fresh, clean)
    assert cache.lengths.tolist() == clean.lengths.tolist() == [11, 11]
    torch.testing.assert_close(after_rollback, reference, rtol=1e-5, atol=1e-5)


def test_rows_with_different_pointers_after_rollback_stay_exact():
    model = tiny_model()
    prompts = [torch.randint(1, 512, (n,)) for n in (4, 7)]
    padded = torch.zeros(2, 7, dtype=torch.long)
    padded[0, 3:], padded[1] = prompts[0], prompts[1]
    drafted = torch.randint(0, 512, (2, 4))
    fresh = torch.randint(0, 512, (2, 3))
    kept = [1, 3]  # row 0 keeps 1 drafted token, row 1 keeps 3
    cache = model.new_cache(2, 24)
    with torch.no_grad():
        model.prefill(padded, cache, torch.tensor([4, 7]))
        model.decode(drafted, cache)
        cache.rollback(torch.tensor([4 - kept[0], 4 - kept[1]]))
        assert cache.lengths.tolist() == [7 + kept[0], 7 + kept[1]]
        logits = model.decode(fresh, cache)
        for row in range(2):
            history = torch.cat([prompts[row], drafted[row, : kept[row]]])
            for i in range(3):
                history = torch.cat([history, fresh[row, i : i + 1]])
                torch.testing.assert_close(
                    logits[row, i], full_next_logits(model, history[None])[0], rtol=1e-5, atol=1e-5
                )


def test_prefill_rejects_bad_lengths():
    model = tiny_model()
    cache = model.new_cache(2, 8)
    with pytest.raises(CheckpointError, match="prompt_lengths"):
        model.prefill(torch.zeros(2, 4, dtype=torch.long), cache, torch.tensor([0, 4]))
    with pytest.raises(CheckpointError, match="cache of 2 rows x 8 slots"):
        model.prefill(torch.zeros(2, 9, dtype=torch.long), cache, torch.tensor([9, 9]))


# ---- training forward ---------------------------------------------------------------------------


def test_loss_with_z_loss_matches_its_definition():
    model = tiny_model()
    ids = torch.randint(0, 512, (2, 6))
    labels = ids.clone()
    labels[0, :3] = -100
    labels[1, 4] = -100
    with torch.no_grad():
        out = model(ids, labels=labels, z_loss_weight=1e-2)
        logits = model(ids)
    terms_ce, terms_z = [], []
    for b in range(2):
        for t in range(5):  # position t predicts labels[b, t + 1]
            target = labels[b, t + 1].item()
            if target == -100:
                continue
            log_z = torch.logsumexp(logits[b, t], dim=0)
            terms_ce.append(log_z - logits[b, t, target])
            terms_z.append(log_z**2)
    ce, z = torch.stack(terms_ce).mean(), torch.stack(terms_z).mean()
    assert out.num_tokens.item() == len(terms_ce) == 7
    torch.testing.assert_close(out.ce_loss, ce)
    torch.testing.assert_close(out.z_loss, z)
    torch.testing.assert_close(out.loss, ce + 1e-2 * z)
    torch.testing.assert_close(out.ce_loss, F.cross_entropy(logits[:, :-1].reshape(-1, 512), labels[:, 1:].reshape(-1)))


def test_residual_dropout_only_in_train_mode():
    model = tiny_model(dropout=0.3)
    ids = torch.randint(0, 512, (1, 8))
    with torch.no_grad():
        assert torch.equal(model(ids), model(ids))
        model.train()
        assert not torch.allclose(model(ids), model(ids))


def test_activation_checkpointing_keeps_names_and_gradients():
    reference, checkpointed = tiny_model(), tiny_model()
    enable_activation_checkpointing(checkpointed)
    enable_activation_checkpointing(checkpointed)  # idempotent
    assert list(checkpointed.state_dict()) == list(reference.state_dict())
    ids = torch.randint(0, 512, (2, 8))
    for model in (reference, checkpointed):
        model.train()
        model(ids, labels=ids, z_loss_weight=1e-4).loss.backward()
    for (name, a), b in zip(reference.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_bfloat16_model_returns_fp32_logits():
    model = tiny_model().to(torch.bfloat16)
    cache = model.new_cache(1, 8)
    assert cache.keys[0].dtype == torch.float32  # CPU attention runs in fp32 (see new_cache)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, dtype=torch.long)).dtype == torch.float32
        assert model.prefill(torch.zeros(1, 3, dtype=torch.long), cache, torch.tensor([3])).dtype == torch.float32


def test_a_bfloat16_cache_and_a_float32_cache_decode_alike():
    model = tiny_model().to(torch.bfloat16)
    ids = torch.randint(0, 512, (2, 6))
    logits = []
    with torch.no_grad():
        for dtype in (torch.bfloat16, torch.float32):
            cache = model.new_cache(2, 16, dtype=dtype)
            assert cache.keys[0].dtype == dtype
            model.prefill(ids[:, :5], cache, torch.tensor([5, 3]))
            logits.append(model.decode(ids[:, 5:], cache))
    # Same keys and values (bf16 values are exact in fp32); only the attention arithmetic differs.
    torch.testing.assert_close(logits[0], logits[1], atol=0.05, rtol=0.02)


@pytest.mark.slow
def test_compiled_decode_matches_eager():
    model = tiny_model()
    prompt = torch.randint(0, 512, (2, 5))
    tokens = torch.randint(0, 512, (2, 3))
    caches = [model.new_cache(2, 16) for _ in range(2)]
    compiled = torch.compile(model.decode, fullgraph=True)
    with torch.no_grad():
        results = []
        for cache, decode in zip(caches, (model.decode, compiled)):
            model.prefill(prompt, cache, torch.tensor([5, 3]))
            decode(tokens[:, :1], cache)
            cache.rollback(torch.tensor([1, 0]))
            results.append(decode(tokens[:, 1:], cache))
    torch.testing.assert_close(results[1], results[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(caches[0].lengths, caches[1].lengths)


def test_config_is_a_plain_dataclass():
    config = ModelConfig.preset("tiny")
    assert dataclasses.replace(config, dropout=0.1).dropout == 0.1
    assert config.head_dim == 16 and config.k_norm_rows == 2


def test_sub_head_gives_the_selected_rows_of_the_full_logits():
    model = tiny_model()
    rows = torch.tensor([5, 1, 77, 300])
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    full_cache, sub_cache = model.new_cache(2, 16), model.new_cache(2, 16)
    lengths = torch.tensor([9, 6])
    head = model.sub_head(rows)
    torch.testing.assert_close(model.prefill(ids, sub_cache, lengths, head=head), model.prefill(ids, full_cache, lengths)[:, rows])
    step = torch.randint(0, model.config.vocab_size, (2, 3))
    torch.testing.assert_close(model.decode(step, sub_cache, head=head), model.decode(step, full_cache)[..., rows])


def test_7b_preset_has_the_official_parameter_names_and_shapes():
    """Every tensor of layer 0 and the top level, as listed from the released 7B (recent transformers
    layout: q/k norms with one row per head)."""
    import re
    from pathlib import Path

    listing = {}
    for line in (Path(__file__).parent / "data" / "chameleon_7b_model_state_dict.txt").read_text().splitlines():
        name, shape = re.fullmatch(r"(\S+) \(([\d, ]*)\)", line.strip()).groups()
        listing[name] = tuple(int(d) for d in shape.replace(" ", "").split(",") if d)
    config = ModelConfig.preset("lumina-mgpt-7b", qk_norm_rows=32)
    with torch.device("meta"):
        model = Transformer(config)
    ours = {n: tuple(p.shape) for n, p in model.named_parameters() if ".layers." not in n or ".layers.0." in n}
    assert ours == listing
