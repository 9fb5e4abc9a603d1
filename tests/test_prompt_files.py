"""Prompt files (`lumina generate --prompts`): text and JSON lines, per-line options over the command line's,
seeds that belong to the line, and one-line errors that name the file and the line."""

import pytest

from lumina_mgpt.errors import FormatError, GenerationError
from lumina_mgpt.generation.prompt_files import LINE_KEYS, PromptLine, parse_prompt_line, read_prompt_file
from lumina_mgpt.model_folder import read_model_info


@pytest.fixture(scope="module")
def embedded():
    info = read_model_info(None, find_image_tokenizer=False)
    return info.layout, info.defaults


def test_text_and_json_lines_are_read_in_order_and_blank_lines_skipped(tmp_path):
    file = tmp_path / "prompts.jsonl"
    file.write_text('  a red circle  \n\n{"prompt": "a blue square", "seed": 7, "n": 2}\n  \nuse {braces} inside\n')
    lines = read_prompt_file(file)
    assert [(line.number, line.prompt, dict(line.options)) for line in lines] == [
        (1, "a red circle", {}),
        (3, "a blue square", {"seed": 7, "n": 2}),
        (5, "use {braces} inside", {}),
    ]


def test_a_line_overrides_the_command_line_and_seeds_count_from_the_line(embedded):
    layout, defaults = embedded
    fallback = {"seed": 100, "n": 3, "cfg": 1.5, "width": None, "height": None}
    plain = PromptLine(4, "a red circle", {}).plan(layout, defaults, fallback)
    assert plain.seeds == (100, 101, 102) and plain.settings.cfg == 1.5 and (plain.width, plain.height) == (64, 64)
    own = PromptLine(9, "a red circle", {"seed": 7, "n": 2, "width": 80, "height": 48, "temperature": 0.0}).plan(
        layout, defaults, fallback
    )
    assert own.seeds == (7, 8) and (own.width, own.height) == (80, 48)
    assert own.settings.image.temperature == 0.0 and own.settings.cfg == 1.5
    assert own.prompts == ("a red circle",) * 2


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"prompt": "a", ', "line 2 starts with '{' but is not valid JSON"),
        ('{"prompt": "a"} {"prompt": "b"}', "line 2 starts with '{' but is not valid JSON"),
        ('{"seed": 3}', 'line 2: "prompt" must be non-empty text, got None'),
        ('{"prompt": 5}', 'line 2: "prompt" must be non-empty text, got 5'),
        ('{"prompt": "a", "sede": 3}', f"unknown key(s) 'sede'; accepted: {', '.join(LINE_KEYS)}"),
    ],
)
def test_malformed_lines_are_refused_naming_the_line(tmp_path, text, message):
    file = tmp_path / "p.jsonl"
    file.write_text(f"a red circle\n{text}\n")
    with pytest.raises(GenerationError, match=r"^\S*p\.jsonl line 2") as error:
        read_prompt_file(file)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "options, error_type, message",
    [
        ({"seed": -1}, GenerationError, "line 3: seed must be an integer from 0"),
        ({"seed": 1.5}, GenerationError, "line 3: seed must be an integer"),
        ({"n": 0}, GenerationError, "line 3: num_images must be an integer >= 1"),
        ({"n": True}, GenerationError, "line 3: num_images must be an integer >= 1"),
        ({"width": 70}, FormatError, "line 3: "),
        ({"cfg": "high"}, GenerationError, "line 3: cfg must be a finite number >= 0"),
        ({"cfg_schedule": "linear"}, GenerationError, "line 3: unknown cfg_schedule 'linear'"),
    ],
)
def test_bad_values_on_a_line_are_refused_with_the_checks_of_generate(embedded, options, error_type, message):
    layout, defaults = embedded
    with pytest.raises(error_type, match=r"^p\.jsonl line 3: ") as error:
        PromptLine(3, "a red circle", options).plan(layout, defaults, {"seed": 0}, where="p.jsonl")
    assert message in str(error.value)


def test_empty_unreadable_and_non_utf8_files_are_refused(tmp_path):
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(GenerationError, match="holds no prompt"):
        read_prompt_file(tmp_path / "empty.txt")
    with pytest.raises(GenerationError, match="cannot read prompt file .*missing.txt"):
        read_prompt_file(tmp_path / "missing.txt")
    (tmp_path / "latin1.txt").write_bytes("un cercle \xe9".encode("latin-1"))
    with pytest.raises(GenerationError, match="give a UTF-8 text file"):
        read_prompt_file(tmp_path / "latin1.txt")


def test_blank_lines_parse_to_nothing():
    assert parse_prompt_line("   \t", 1) is None
