"""The data pipeline: sources, pre-tokenization (resume, broken records, ranks), loading and batching."""

from __future__ import annotations

import argparse
import io
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from lumina_mgpt.data import (
    BatchPlan,
    Collator,
    LengthGroupedBatches,
    MixedBatches,
    ParquetColumns,
    PretokenizeSettings,
    RecordIndex,
    Sample,
    TokenDataset,
    Tokenizers,
    pretokenize,
)
from lumina_mgpt.data import pretokenize_cli
from lumina_mgpt.data import shard_encoder
from lumina_mgpt.data.manifest import read_manifest, write_manifest
from lumina_mgpt.data.shards import EncodedSample, ShardSummary, read_samples, write_shard
from lumina_mgpt.errors import DataError
from lumina_mgpt.formats import IGNORE_INDEX, IMAGE_PLACEHOLDER, get_layout
from lumina_mgpt.model_folder import Defaults, write_project_file
from lumina_mgpt.text import TextTokenizer
from lumina_mgpt.vision import ImageTokenizer, VQConfig

CAPTIONS = ["a red circle above a blue square", "two green triangles", "a yellow star on the left of a cup"]
# Image sizes that fall into different buckets at target 64: 64x64, 128x32, 32x96 and 64x64 again.
IMAGE_SIZES = [(64, 64), (130, 36), (40, 120), (90, 70)]
SETTINGS = PretokenizeSettings(target_size=64, shard_size=4, encode_batch_size=4)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizers() -> Tokenizers:
    text = TextTokenizer.train_bpe(CAPTIONS * 4, vocab_size=300)
    torch.manual_seed(0)
    config = VQConfig(
        family="vq", block_out_channels=(32,) * 5, layers_per_block=1, latent_channels=4, embed_dim=4,
        codebook_size=64, mid_attention=False,
    )
    image = ImageTokenizer(config).eval()
    with torch.no_grad():
        # Codes spread wider than the latents (std ~0.2): with the default +-1/64 init some latent's two
        # nearest codes were within float32 noise of a tie, and another batch size (or CPU) moved the
        # latent by that much, so "the same shards" would hang on a coin flip.
        image.codebook.normal_(std=0.5)
    layout = get_layout("compact", text, codebook_size=64, downsample=16)
    return Tokenizers(text, image, layout)


def _write_image(path: Path, size: tuple[int, int], seed: int) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _caption_jsonl(folder: Path, count: int, extra_lines: dict[int, str] | None = None) -> Path:
    """`count` caption records with relative image paths; `extra_lines` inserts raw lines at given positions."""
    lines = []
    for number in range(count):
        _write_image(folder / f"img{number}.png", IMAGE_SIZES[number % len(IMAGE_SIZES)], number)
        lines.append(json.dumps({"image": f"img{number}.png", "prompt": CAPTIONS[number % len(CAPTIONS)]}))
    for position, line in sorted((extra_lines or {}).items()):
        lines.insert(position, line)
    path = folder / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _shard_rows(folder: Path) -> dict[str, list]:
    manifest = read_manifest(folder)
    return {shard["file"]: read_samples(folder / shard["file"]).to_pylist() for shard in manifest["shards"]}


@pytest.fixture(scope="module")
def caption_data(tmp_path_factory, tokenizers) -> tuple[Path, Path]:
    """A caption JSONL of 10 records (shards of 4: 3 shards), pretokenized without interruption."""
    folder = tmp_path_factory.mktemp("captions")
    source = _caption_jsonl(folder, 10)
    out = folder / "tokens"
    pretokenize([source], out, tokenizers, SETTINGS, progress=False)
    return source, out


# -- sources ---------------------------------------------------------------------------------------


def test_sources_read_conversations_captions_and_parquet(tmp_path):
    elsewhere = tmp_path / "elsewhere" / "b.png"
    conversation = {
        "conversations": [
            {"from": "human", "value": f"Compare {IMAGE_PLACEHOLDER} and"},
            {"from": "gpt", "value": f"this: {IMAGE_PLACEHOLDER}"},
        ],
        "images": ["a.png", str(elsewhere)],  # relative to the JSON file's folder, and absolute
    }
    (tmp_path / "list.json").write_text(json.dumps([conversation, {"image": "a.png", "prompt": "a cat"}]))
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), "red").save(buffer, format="PNG")
    table = pa.table({"picture": [{"bytes": buffer.getvalue(), "path": None}, {"bytes": None, "path": None}],
                      "text": ["a red square", "lost"]})
    pq.write_table(table, tmp_path / "table.parquet")

    index = RecordIndex([tmp_path / "list.json", tmp_path / "table.parquet"], ParquetColumns("picture", "text"))
    records = list(index.read(0, index.total))

    assert index.total == 4
    assert [r.source_id for r in records] == [
        f"{tmp_path / 'list.json'}:0", f"{tmp_path / 'list.json'}:1",
        f"{tmp_path / 'table.parquet'}:0", f"{tmp_path / 'table.parquet'}:1",
    ]
    assert records[0].images == (str(tmp_path / "a.png"), str(elsewhere))
    assert records[0].conversation([(64, 64), (64, 64)]) == [turn["value"] for turn in conversation["conversations"]]
    assert records[1].conversation([(96, 32)]) == [
        "Generate an image of 96x32 according to the following prompt:\na cat", IMAGE_PLACEHOLDER,
    ]
    assert records[2].images == (buffer.getvalue(),) and records[2].caption == "a red square"
    assert "no image bytes" in records[3].reason
    assert [r.source_id for r in index.read(1, 3)] == [records[1].source_id, records[2].source_id]


def test_jsonl_records_keep_their_line_numbers_and_bad_conversations_say_why(tmp_path):
    turns = [{"from": "human", "value": f"draw {IMAGE_PLACEHOLDER}"}, {"from": "gpt", "value": "ok"}]
    lines = [
        json.dumps({"conversations": turns, "image": "x.png"}),  # one path as a plain string
        "",
        json.dumps({"conversations": turns[::-1], "image": ["x.png"]}),
        "   ",
        json.dumps({"conversations": turns, "images": []}),
        json.dumps(["not", "an", "object"]),
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    index = RecordIndex([tmp_path / "d.jsonl"])
    records = list(index.read(0, index.total))
    assert index.total == 4
    assert [r.source_id.rsplit(":", 1)[1] for r in records] == ["1", "3", "5", "6"]
    assert records[0].images == (str(tmp_path / "x.png"),)
    assert 'turn 0 is from \'gpt\'' in records[1].reason
    assert "1 <|image|> placeholders but the record lists 0 images" in records[2].reason
    assert "must be a JSON object" in records[3].reason
    assert [r.source_id for r in index.read(2, 4)] == [records[2].source_id, records[3].source_id]


def test_sources_refuse_unknown_files_and_missing_parquet_columns(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")
    pq.write_table(pa.table({"image": [b"x"]}), tmp_path / "t.parquet")
    with pytest.raises(DataError, match="accepted: .jsonl, .json, .parquet"):
        RecordIndex([tmp_path / "x.csv"])
    with pytest.raises(DataError, match="no column"):
        RecordIndex([tmp_path / "t.parquet"])


# -- pre-tokenization --------------------------------------------------------------------------------


def test_pretokenize_writes_shards_with_bucket_prompts_and_counts(caption_data, tokenizers):
    source, out = caption_data
    manifest = read_manifest(out)
    rows = [row for shard in _shard_rows(out).values() for row in shard]

    assert [s["file"] for s in manifest["shards"]] == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    assert [(s["first_record"], s["stop_record"]) for s in manifest["shards"]] == [(0, 4), (4, 8), (8, 10)]
    assert manifest["counts"] == {"records": 10, "skipped": 0, "tokens": sum(row["length"] for row in rows)}
    assert manifest["fingerprint"] == tokenizers.fingerprint().to_dict()
    assert [row["source_id"] for row in rows] == [f"{source}:{line}" for line in range(1, 11)]
    layout = tokenizers.layout
    for number, row in enumerate(rows):
        ids, labels = np.asarray(row["ids"]), np.asarray(row["labels"])
        start = int(np.flatnonzero(ids == layout.start_image_id)[0])
        size = (64, 64) if number % 4 in (0, 3) else (128, 32) if number % 4 == 1 else (32, 96)
        question = tokenizers.text.decode(ids[1:start - 1])
        assert question == f"Generate an image of {size[0]}x{size[1]} according to the following prompt:\n" + CAPTIONS[number % 3]
        rows_, cols = size[1] // 16, size[0] // 16
        assert len(ids) == start + rows_ * (cols + 1) + 4 + 1  # image block, then the separator
        assert (labels[:start] == IGNORE_INDEX).all() and (labels[start:] == ids[start:]).all()


def test_killed_run_resumes_to_the_same_shards(caption_data, tmp_path, monkeypatch, tokenizers):
    source, uninterrupted = caption_data
    out = tmp_path / "tokens"
    real_write = shard_encoder.write_shard
    written = []

    def write_then_die(folder, samples, summary):
        if len(written) == 2:
            raise KeyboardInterrupt  # the process is killed while encoding the third shard
        written.append(summary.shard)
        return real_write(folder, samples, summary)

    monkeypatch.setattr(shard_encoder, "write_shard", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        pretokenize([source], out, tokenizers, SETTINGS, progress=False)
    assert not (out / "manifest.json").exists() and written == [0, 1]
    (out / ".shard-00002.parquet.half.tmp").write_bytes(b"half a file")  # what a real kill leaves behind

    monkeypatch.setattr(shard_encoder, "write_shard", lambda *a: written.append(a[2].shard) or real_write(*a))
    manifest = pretokenize([source], out, tokenizers, SETTINGS, progress=False)

    assert written == [0, 1, 2]  # the restart encoded only the missing shard
    assert _shard_rows(out) == _shard_rows(uninterrupted)
    assert manifest["counts"] == read_manifest(uninterrupted)["counts"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", *(f"shard-0000{k}.parquet" for k in range(3))]


def test_ranks_split_shards_and_the_last_one_writes_the_manifest(caption_data, tmp_path, tokenizers):
    source, uninterrupted = caption_data
    out = tmp_path / "tokens"
    assert pretokenize([source], out, tokenizers, SETTINGS, rank=1, world_size=2, progress=False) is None
    assert sorted(p.name for p in out.iterdir()) == ["shard-00001.parquet"]
    manifest = pretokenize([source], out, tokenizers, SETTINGS, rank=0, world_size=2, progress=False)
    assert manifest["counts"] == read_manifest(uninterrupted)["counts"]
    assert _shard_rows(out) == _shard_rows(uninterrupted)


@pytest.mark.slow  # spawning workers that import torch and diffusers takes tens of seconds on 2 cores
def test_worker_processes_write_the_same_shards(caption_data, tmp_path, tokenizers):
    source, uninterrupted = caption_data
    out = tmp_path / "tokens"
    pretokenize([source], out, tokenizers, SETTINGS, workers=2, progress=False)
    assert _shard_rows(out) == _shard_rows(uninterrupted)


def test_shard_contents_do_not_depend_on_shard_batch_or_thread_counts(caption_data, tmp_path, tokenizers):
    source, uninterrupted = caption_data
    settings = PretokenizeSettings(target_size=64, shard_size=3, encode_batch_size=2, image_threads=1)
    pretokenize([source], tmp_path / "other", tokenizers, settings, progress=False)
    rows = [row for shard in _shard_rows(tmp_path / "other").values() for row in shard]
    assert rows == [row for shard in _shard_rows(uninterrupted).values() for row in shard]


@pytest.mark.slow  # a fresh interpreter importing torch and diffusers takes tens of seconds on 2 cores
def test_a_really_killed_process_resumes_to_the_same_shards(tmp_path, tokenizers):
    tokenizers.text.save(tmp_path / "tokenizer.json")
    tokenizers.image.save_pretrained(tmp_path / "vq")
    source = _caption_jsonl(tmp_path, 40)
    command = [
        sys.executable, "-m", "lumina_mgpt.cli", "pretokenize", str(source), "--tokenizer", str(tmp_path / "tokenizer.json"),
        "--image-tokenizer", str(tmp_path / "vq"), "--layout", "compact", "--target-size", "64", "--shard-size", "2",
        "--device", "cpu",
    ]
    process = subprocess.Popen([*command, "--out", str(tmp_path / "killed")], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while len(list((tmp_path / "killed").glob("shard-*.parquet"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.kill()
    process.wait()
    finished = sorted(p.name for p in (tmp_path / "killed").glob("shard-*.parquet"))
    assert 3 <= len(finished) < 20 and not (tmp_path / "killed" / "manifest.json").exists()

    settings = PretokenizeSettings(target_size=64, shard_size=2)
    resumed = pretokenize([source], tmp_path / "killed", tokenizers, settings, progress=False)
    whole = pretokenize([source], tmp_path / "whole", tokenizers, settings, progress=False)
    assert _shard_rows(tmp_path / "killed") == _shard_rows(tmp_path / "whole")
    assert resumed["counts"] == whole["counts"] == {**whole["counts"], "records": 40, "skipped": 0}


def test_a_folder_of_another_job_is_refused(caption_data, tokenizers):
    source, out = caption_data
    with pytest.raises(DataError, match="other inputs or settings"):
        pretokenize([source], out, tokenizers, PretokenizeSettings(target_size=64, shard_size=4, seed=1), progress=False)


def test_broken_records_are_skipped_counted_and_logged(tmp_path, tokenizers, caplog):
    _write_image(tmp_path / "cut.png", (64, 64), 7)
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:200])
    source = _caption_jsonl(tmp_path, 6, extra_lines={
        1: "{not json",
        3: json.dumps({"image": "missing.png", "prompt": "gone"}),
        5: json.dumps({"image": "cut.png", "prompt": "truncated"}),
        7: json.dumps({"picture": "img0.png"}),
    })
    lenient = PretokenizeSettings(target_size=64, shard_size=4, max_bad_share=0.5)
    with caplog.at_level(logging.WARNING, logger="lumina_mgpt.data.pretokenizer"):
        manifest = pretokenize([source], tmp_path / "ok", tokenizers, lenient, progress=False)

    bad_ids = [f"{source}:{line}" for line in (2, 4, 6, 8)]
    assert manifest["counts"]["records"] == 6 and manifest["counts"]["skipped"] == 4
    assert [entry["source_id"] for entry in manifest["skipped_records"]] == bad_ids
    reasons = [entry["reason"] for entry in manifest["skipped_records"]]
    assert "not valid JSON" in reasons[0] and "does not exist" in reasons[1]
    assert "cannot decode" in reasons[2] and "accepted" in reasons[3]
    assert all(bad_id in caplog.text for bad_id in bad_ids)

    strict = PretokenizeSettings(target_size=64, shard_size=4, max_bad_share=0.3)
    with pytest.raises(DataError, match="4 of 10 records are broken"):
        pretokenize([source], tmp_path / "strict", tokenizers, strict, progress=False)
    assert not (tmp_path / "strict" / "manifest.json").exists()


def test_conversations_in_image_loss_mode(tmp_path, tokenizers):
    _write_image(tmp_path / "q.png", (64, 64), 3)
    _write_image(tmp_path / "a.png", (64, 64), 4)
    record = {"conversations": [{"from": "human", "value": f"make it blue {IMAGE_PLACEHOLDER}"},
                                {"from": "gpt", "value": IMAGE_PLACEHOLDER}], "image": ["q.png", "a.png"]}
    (tmp_path / "chat.jsonl").write_text(json.dumps(record) + "\n")
    settings = PretokenizeSettings(target_size=64, loss_mode="image", center_crop=True)
    pretokenize([tmp_path / "chat.jsonl"], tmp_path / "out", tokenizers, settings, progress=False)
    sample = TokenDataset(tmp_path / "out")[0]
    starts = np.flatnonzero(sample.ids == tokenizers.layout.start_image_id)
    assert len(starts) == 2
    assert (sample.labels[: starts[1] + 1] == IGNORE_INDEX).all()  # the question image and <start-of-image>
    assert (sample.labels[starts[1] + 1 :] == sample.ids[starts[1] + 1 :]).all()


def test_size_drop_and_records_without_supervision(tmp_path, tokenizers):
    source = _caption_jsonl(tmp_path, 2, extra_lines={
        2: json.dumps({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}),
    })
    settings = PretokenizeSettings(target_size=64, loss_mode="image", size_drop=1.0, max_bad_share=0.5)
    manifest = pretokenize([source], tmp_path / "out", tokenizers, settings, progress=False)
    assert manifest["skipped_records"] == [
        {"source_id": f"{source}:3", "reason": "no token is supervised in loss mode 'image'"},
    ]
    dataset = TokenDataset(tmp_path / "out")
    for index in range(2):
        ids = dataset[index].ids
        start = int(np.flatnonzero(ids == tokenizers.layout.start_image_id)[0])
        assert tokenizers.text.decode(ids[1 : start - 1]).startswith("Generate an image according to the following prompt:\n")


def test_cli_pretokenizes_a_project_style_setup(tmp_path, tokenizers, capsys):
    tokenizers.text.save(tmp_path / "tokenizer.json")
    tokenizers.image.save_pretrained(tmp_path / "vq")
    source = _caption_jsonl(tmp_path, 3)
    parser = argparse.ArgumentParser()
    pretokenize_cli.add_arguments(parser)
    args = parser.parse_args([
        str(source), "--out", str(tmp_path / "out"), "--tokenizer", str(tmp_path / "tokenizer.json"),
        "--image-tokenizer", str(tmp_path / "vq"), "--layout", "compact", "--target-size", "64", "--device", "cpu",
    ])
    assert pretokenize_cli.run(args) == 0
    assert "3 records (0 skipped)" in capsys.readouterr().out
    dataset = TokenDataset(tmp_path / "out", expected_fingerprint=tokenizers.fingerprint())
    assert len(dataset) == 3

    # A project model folder names all three itself.
    model = tmp_path / "model"
    model.mkdir()
    tokenizers.text.save(model / "tokenizer.json")
    tokenizers.image.save_pretrained(model / "image_tokenizer")
    defaults = Defaults(image_top_k=16, text_top_k=1, temperature=1.0, cfg=1.0, size=(64, 64))
    write_project_file(model, tokenizers.layout, defaults)
    args = parser.parse_args([str(source), "--out", str(tmp_path / "out2"), "--model", str(model),
                              "--target-size", "64", "--device", "cpu"])
    assert pretokenize_cli.run(args) == 0
    assert _shard_rows(tmp_path / "out2") == _shard_rows(tmp_path / "out")


# -- loading -----------------------------------------------------------------------------------------

def _synthetic_dataset(folder: Path, lengths: list[int], fingerprint: str = "a" * 64, shard_size: int = 50) -> Path:
    """A data set of t2i-like samples: text, then <start-of-image> halfway, supervised from there on
    (the compact layout without a tokenizer has no BOS)."""
    folder.mkdir(parents=True)
    layout = get_layout("compact", text_vocab_size=16, codebook_size=8, max_indicator=4)
    start = layout.start_image_id
    shards = []
    for shard, first in enumerate(range(0, len(lengths), shard_size)):
        samples = []
        for index in range(first, min(first + shard_size, len(lengths))):
            length = lengths[index]
            ids = np.arange(length, dtype=np.int64) % 10 + 3
            ids[length // 2] = start
            labels = np.where(np.arange(length) > length // 2, ids, IGNORE_INDEX)
            samples.append(EncodedSample(f"synthetic:{index}", ids, labels))
        summary = ShardSummary("job", shard, first, first + len(samples), len(samples), 0, sum(lengths[first:first + len(samples)]))
        write_shard(folder, samples, summary)
        shards.append({"file": summary.file, "first_record": first, "stop_record": summary.stop_record,
                       "records": len(samples), "tokens": summary.tokens})
    write_manifest(folder, {
        "job": "job", "fingerprint": {"layout": fingerprint, "text_tokenizer": "t", "image_tokenizer": "i"},
        "layout": layout.to_dict(), "settings": {}, "sources": [], "counts": {}, "shards": shards, "skipped_records": [],
    })
    return folder


def _lengths(count: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(8, 400, count).tolist()


def test_token_dataset_reads_samples_and_refuses_other_fingerprints(tmp_path):
    lengths = _lengths(120, 0)
    folder = _synthetic_dataset(tmp_path / "d", lengths)
    dataset = TokenDataset(folder)
    assert len(dataset) == 120 and dataset.lengths.tolist() == lengths
    assert len(dataset[119].ids) == lengths[119] and dataset.source_ids[119] == "synthetic:119"
    assert TokenDataset(folder, expected_fingerprint=dataset.fingerprint.combined).fingerprint == dataset.fingerprint
    with pytest.raises(DataError) as refused:
        TokenDataset(folder, expected_fingerprint="b" * 64)
    assert dataset.fingerprint.combined in str(refused.value) and "b" * 64 in str(refused.value)
    with pytest.raises(DataError, match="no manifest.json"):
        TokenDataset(tmp_path)


def test_length_grouped_batches_are_deterministic_complete_and_tight():
    lengths = _lengths(1000, 1)
    plans = list(LengthGroupedBatches(lengths, 16, seed=3, chunk_batches=8))
    again = list(LengthGroupedBatches(lengths, 16, seed=3, chunk_batches=8))
    other_seed = list(LengthGroupedBatches(lengths, 16, seed=4, chunk_batches=8))

    assert [p.indices.tolist() for p in plans] == [p.indices.tolist() for p in again]
    assert [p.indices.tolist() for p in plans] != [p.indices.tolist() for p in other_seed]
    assert sorted(np.concatenate([p.indices for p in plans]).tolist()) == list(range(1000))
    lengths = np.asarray(lengths)

    def waste(batches):
        return sum(len(b) * lengths[b].max() - lengths[b].sum() for b in batches) / lengths.sum()

    random_batches = np.array_split(np.random.default_rng(0).permutation(1000), len(plans))
    grouped, random_waste = waste([p.indices for p in plans]), waste(random_batches)
    print(f"padding per real token: length-grouped {grouped:.3f}, random {random_waste:.3f}")
    assert grouped < 0.2 * random_waste


def test_batches_resume_mid_epoch_and_move_to_the_next_epoch():
    lengths = _lengths(300, 2)
    full = LengthGroupedBatches(lengths, 8, seed=0)
    epoch0, epoch1 = list(full), list(full)
    assert {int(p.epochs[0]) for p in epoch1} == {1}
    assert [p.indices.tolist() for p in epoch0] != [p.indices.tolist() for p in epoch1]

    interrupted = LengthGroupedBatches(lengths, 8, seed=0)
    iterator = iter(interrupted)
    seen = [next(iterator) for _ in range(7)]
    resumed = LengthGroupedBatches(lengths, 8, seed=0)
    resumed.load_state_dict(json.loads(json.dumps(interrupted.state_dict())))
    rest = list(resumed)
    assert [p.indices.tolist() for p in seen + rest] == [p.indices.tolist() for p in epoch0]
    assert [p.step for p in rest] == list(range(7, len(epoch0)))
    with pytest.raises(DataError, match="cannot resume"):
        LengthGroupedBatches(lengths, 16, seed=0).load_state_dict(interrupted.state_dict())


@pytest.mark.parametrize("max_tokens", [None, 1200])
def test_ranks_get_disjoint_balanced_shares(max_tokens):
    lengths = _lengths(203, 3)
    world = 4
    per_rank = [list(LengthGroupedBatches(lengths, 16, seed=1, rank=r, world_size=world, max_tokens=max_tokens))
                for r in range(world)]
    assert len({len(plans) for plans in per_rank}) == 1
    everything = []
    for step_plans in zip(*per_rank):
        shares = [p.indices.tolist() for p in step_plans]
        assert min(len(s) for s in shares) >= 1 and max(len(s) for s in shares) - min(len(s) for s in shares) <= 1
        everything += [i for share in shares for i in share]
        batch = [i for share in shares for i in share]
        if max_tokens is not None and len(batch) > world and len(batch) % world == 0:  # not a chunk's merged tail
            assert len(batch) * max(lengths[i] for i in batch) <= max_tokens
    assert sorted(everything) == list(range(203))


def test_collator_pads_right_and_drops_context_deterministically(tmp_path):
    dataset = TokenDataset(_synthetic_dataset(tmp_path / "d", [9, 5, 12, 7] * 100))
    layout = dataset.layout
    plan = BatchPlan(0, np.arange(4), np.zeros(4, dtype=np.int64))
    batch = Collator(layout, context_drop=0.0)(dataset, plan)
    assert batch["input_ids"].shape == batch["labels"].shape == (4, 12)
    assert batch["input_ids"].dtype == torch.long
    assert (batch["input_ids"][1, 5:] == layout.pad_id).all() and (batch["labels"][1, 5:] == IGNORE_INDEX).all()
    assert batch["input_ids"][2].tolist() == dataset[2].ids.tolist()

    dropped = Collator(layout, context_drop=1.0)(dataset, plan)
    for row in range(4):
        sample = dataset[row]
        start = len(sample.ids) // 2
        assert dropped["input_ids"][row, : len(sample.ids) - start].tolist() == sample.ids[start:].tolist()

    collator = Collator(layout, context_drop=0.1, seed=5)
    all_samples = BatchPlan(0, np.arange(400), np.zeros(400, dtype=np.int64))
    decisions = [len(collator.drop_context(dataset[i], i, 0).ids) < len(dataset[i].ids) for i in range(400)]
    assert 20 <= sum(decisions) <= 60
    assert torch.equal(collator(dataset, all_samples)["input_ids"], collator(dataset, all_samples)["input_ids"])
    next_epoch = [len(collator.drop_context(dataset[i], i, 1).ids) < len(dataset[i].ids) for i in range(400)]
    assert decisions != next_epoch


def test_context_drop_keeps_samples_without_an_answer_image():
    layout = get_layout("compact", text_vocab_size=16, codebook_size=8, max_indicator=4)
    ids = np.asarray([2, layout.start_image_id, 5, 6, 7])
    sample = Sample(ids, np.full(5, IGNORE_INDEX))  # the image is in the question: nothing supervised after it
    assert Collator(layout, context_drop=1.0).drop_context(sample, 0, 0) is sample


def test_mixed_batches_hold_ratios_and_resume(tmp_path):
    small = TokenDataset(_synthetic_dataset(tmp_path / "small", _lengths(40, 4)))
    large = TokenDataset(_synthetic_dataset(tmp_path / "large", _lengths(300, 5)))
    mixed = MixedBatches([(small, 1.0), (large, 3.0)], 10, seed=2)
    iterator = iter(mixed)
    plans = [next(iterator) for _ in range(60)]
    indices = np.concatenate([p.indices for p in plans])
    from_small = int((indices < 40).sum())
    assert abs(from_small - 0.25 * len(indices)) <= 1
    # The small data set went round several times, each pass exactly once per sample.
    small_epochs = np.concatenate([p.epochs[p.indices < 40] for p in plans])
    assert small_epochs.max() == 3
    for epoch in range(3):
        assert sorted(indices[indices < 40][small_epochs == epoch].tolist()) == list(range(40))

    resumed = MixedBatches([(small, 1.0), (large, 3.0)], 10, seed=2)
    partial = MixedBatches([(small, 1.0), (large, 3.0)], 10, seed=2)
    partial_iterator = iter(partial)
    [next(partial_iterator) for _ in range(25)]
    resumed.load_state_dict(json.loads(json.dumps(partial.state_dict())))
    resumed_iterator = iter(resumed)
    assert [next(resumed_iterator).indices.tolist() for _ in range(35)] == [p.indices.tolist() for p in plans[25:]]

    shares = [MixedBatches([(small, 1.0), (large, 3.0)], 10, seed=2, rank=r, world_size=2) for r in range(2)]
    first = [next(iter(s)).indices.tolist() for s in shares]
    assert not set(first[0]) & set(first[1]) and sorted(first[0] + first[1]) == sorted(plans[0].indices.tolist())

    batch = Collator(mixed.dataset.layout)(mixed.dataset, plans[0])
    assert batch["input_ids"].shape[0] == 10


def test_mixing_refuses_data_sets_of_different_fingerprints(tmp_path):
    one = TokenDataset(_synthetic_dataset(tmp_path / "one", _lengths(10, 6)))
    two = TokenDataset(_synthetic_dataset(tmp_path / "two", _lengths(10, 7), fingerprint="c" * 64))
    with pytest.raises(DataError, match="cannot be mixed"):
        MixedBatches([(one, 1.0), (two, 1.0)], 4)
