"""Prompt files over one process or many (`lumina generate --prompts`, torchrun): batches cut by the file
alone, each rank's share, outputs written as they finish, reruns that skip what exists, one manifest, and
the same PNGs from one process as from two."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lumina_mgpt.cli import main
from lumina_mgpt.errors import GenerationError
from lumina_mgpt.generation.batch_run import MANIFEST, make_batches, plan_jobs, rank_share, run_batches
from lumina_mgpt.generation.pipeline import Pipeline
from lumina_mgpt.generation.prompt_files import PromptLine

PROMPTS = [
    "a red circle",
    "two blue squares",
    "a green triangle above a yellow circle",
    "a purple square",
    "three red circles",
    "a blue circle to the left of a green square",
]


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.from_pretrained(device="cpu")


def write_prompts(path: Path, count: int) -> Path:
    """`count` lines: plain text, JSON with its own seed, JSON with its own size (so batches change key)."""
    lines = []
    for i in range(count):
        prompt = PROMPTS[i % len(PROMPTS)]
        lines.append(prompt if i % 3 == 0 else json.dumps({"prompt": prompt, "seed": 10 * i}))
        if i % 7 == 6:
            lines[-1] = json.dumps({"prompt": prompt, "width": 48, "height": 32})
    path.write_text("\n".join(lines) + "\n")
    return path


def jobs_of(pipe, lines, **fallback):
    return plan_jobs(lines, pipe.layout, pipe.defaults, {"width": 32, "height": 32, **fallback})


def test_batches_follow_the_file_and_ranks_split_them_without_overlap(pipe):
    lines = [PromptLine(1, "a", {"n": 3}), PromptLine(2, "b", {"width": 48}), PromptLine(5, "c", {"seed": 4})]
    jobs = jobs_of(pipe, lines)
    assert [job.name for job in jobs] == [
        "00001-a-seed0.png",
        "00001-a-seed1.png",
        "00001-a-seed2.png",
        "00002-b-seed0.png",
        "00005-c-seed4.png",
    ]
    batches = make_batches(jobs, batch_size=2)
    # A batch never mixes sizes: line 2 is alone, and line 5 does not join line 1's last image.
    assert [[job.name[:8] for job in batch] for batch in batches] == [
        ["00001-a-", "00001-a-"],
        ["00001-a-"],
        ["00002-b-"],
        ["00005-c-"],
    ]
    shares = [rank_share(batches, rank, 3) for rank in range(3)]
    assert sorted(id(b) for share in shares for b in share) == sorted(id(b) for b in batches)
    assert shares[0] == [batches[0], batches[3]]


def test_a_line_repeating_a_seed_is_refused(pipe):
    with pytest.raises(GenerationError, match="share the file name 00003-a-seed5.png"):
        jobs_of(pipe, [PromptLine(3, "a", {"n": 2, "seed": [5, 5]})])


def test_two_ranks_shares_write_the_same_files_as_one_process(pipe, tmp_path):
    lines = [PromptLine(i + 1, prompt, {"seed": i}) for i, prompt in enumerate(PROMPTS[:5])]
    batches = make_batches(jobs_of(pipe, lines, n=1), batch_size=2)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    written = [run_batches(pipe, rank_share(batches, rank, 2), tmp_path / "two") for rank in (0, 1)]
    assert written == [(3, 0), (2, 0)]
    assert run_batches(pipe, batches, tmp_path / "one") == (5, 0)
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir()) and len(names) == 5
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_a_rerun_skips_what_exists_and_refills_what_is_missing(tmp_path, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 5)
    out = tmp_path / "out"
    command = [
        "generate",
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        "--width",
        "32",
        "--height",
        "32",
        "--batch-size",
        "2",
        "--device",
        "cpu",
    ]
    assert main(command) == 0
    first = capsys.readouterr()
    images = sorted(out.glob("*.png"))
    assert len(images) == 5 and first.out.splitlines() == [str(p) for p in sorted(images, key=lambda p: p.name)]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["count"] == 5 and [entry["line"] for entry in manifest["images"]] == [1, 2, 3, 4, 5]
    assert [entry["seed"] for entry in manifest["images"]] == [0, 10, 20, 0, 40]
    original = {p.name: p.read_bytes() for p in images}

    lost = images[3]
    lost.unlink()
    assert main(command) == 0
    second = capsys.readouterr()
    assert second.out.splitlines() == [str(lost)]  # only the missing image is written again
    assert "wrote 1 image(s), skipped 4" in second.err
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == original

    assert main(command) == 0  # nothing left to do: no model load, the manifest rewritten
    third = capsys.readouterr()
    assert third.out == "" and "loading model" not in third.err and "skipped 5" in third.err


def test_bad_prompt_files_and_mixed_inputs_are_refused_before_the_model_loads(tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('a red circle\n{"prompt": "a blue square", "n": 0}\n')
    assert main(["generate", "--prompts", str(prompts), "--out", str(tmp_path / "out")]) == 2
    assert "p.jsonl line 2: num_images must be an integer >= 1" in capsys.readouterr().err
    assert main(["generate", "a red circle", "--prompts", str(prompts)]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["generate"]) == 2
    assert "no prompts given" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _torchrun(prompts: Path, out: Path, processes: int, log: Path) -> subprocess.Popen:
    """`torchrun --nproc-per-node N -m lumina_mgpt.cli generate --prompts ...` in its own process group."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(processes),
        "-m",
        "lumina_mgpt.cli",
        "generate",
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        "--width",
        "32",
        "--height",
        "32",
        "--batch-size",
        "2",
        "--device",
        "cpu",
    ]
    with open(log, "w") as output:  # the child keeps its own handle
        return subprocess.Popen(
            command,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            start_new_session=True,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.slow
def test_torchrun_two_ranks_killed_and_rerun_give_every_image_once_as_one_process(tmp_path):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 20)
    single = _torchrun(prompts, tmp_path / "one", 1, tmp_path / "one.log")
    assert single.wait(timeout=600) == 0, (tmp_path / "one.log").read_text()

    out = tmp_path / "two"
    victim = _torchrun(prompts, out, 2, tmp_path / "killed.log")
    while len(list(out.glob("*.png"))) < 6:
        assert victim.poll() is None, (
            "the run ended before it could be killed: " + (tmp_path / "killed.log").read_text()
        )
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    assert 6 <= len(list(out.glob("*.png"))) < 20 and not (out / MANIFEST).exists()

    rerun = _torchrun(prompts, out, 2, tmp_path / "rerun.log")
    assert rerun.wait(timeout=600) == 0, (tmp_path / "rerun.log").read_text()
    expected = sorted(p.name for p in (tmp_path / "one").glob("*.png"))
    assert len(expected) == 20 and sorted(p.name for p in out.glob("*.png")) == expected  # no loss, no duplicate
    for name in expected:
        assert (out / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    manifest = json.loads((out / MANIFEST).read_text())
    assert sorted(entry["file"] for entry in manifest["images"]) == expected
