"""The trainer's view of a dataset, before any weights are loaded.

Covers:
- a file with bad lines is refused with every bad line's number and what was wrong; an empty or
  missing file is refused with a reason;
- the loss mask on the token level: labels are the assistant's tokens exactly (tool-call JSON and
  end-of-turn included), every prompt token is -100, in single- and multi-turn chats;
- a chat template without ``{% generation %}`` tags gives the same mask (prefix rendering), and a
  tokenizer without a template gets the built-in ChatML one;
- truncation to maxSeqLength, and dropping an example that keeps no assistant token;
- the trainer config: camelCase keys, defaults, relative paths against the file, errors that name
  the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lightning_op.training import config as cfg
from lightning_op.training import data, tiny

GOOD = {
    "messages": [
        {"role": "system", "content": "Pick a tool."},
        {"role": "user", "content": "churn in Q3?"},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "call_0", "type": "function", "function": {"name": "analyze_churn", "arguments": "{}"}}
            ],
        },
    ]
}
MULTI_TURN = {
    "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "top products?"},
        {
            "role": "assistant",
            "tool_calls": [{"type": "function", "function": {"name": "top_products", "arguments": {"n": 3}}}],
        },
    ]
}
ASSISTANT_TEXT = '<tool_call>{"name": "analyze_churn", "arguments": {}}</tool_call><|im_end|>'


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return tiny.build_byte_tokenizer()


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_bad_lines_are_listed_with_numbers_and_reasons(tmp_path: Path) -> None:
    good = json.dumps(GOOD)
    path = _write(
        tmp_path / "train.jsonl",
        [
            good,
            "{not json",
            good,
            json.dumps({"messages": [{"role": "user", "content": "no answer"}]}),
            json.dumps({"messages": [{"role": "wizard", "content": "x"}, GOOD["messages"][2]]}),
            "",
            json.dumps(["a", "list"]),
        ],
    )
    with pytest.raises(data.DatasetError) as info:
        data.read_rows(path)
    assert info.value.line_numbers == [2, 4, 5, 7]
    message = str(info.value)
    assert "4 bad lines" in message and str(path) in message
    assert "line 2: not valid JSON" in message
    assert "line 4: no assistant message" in message
    assert "line 5: messages[0]" in message and "role" in message
    assert "line 7: expected a JSON object" in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [("", "no rows"), (None, "cannot read")],
    ids=["empty-file", "missing-file"],
)
def test_unusable_file_is_refused(tmp_path: Path, content: str | None, expected: str) -> None:
    path = tmp_path / "train.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(data.DatasetError, match=expected):
        data.read_rows(path)


def _labeled_text(tokenizer: Any, example: data.Example) -> str:
    return str(tokenizer.decode([t for t in example.labels if t != data.IGNORE_INDEX]))


def test_loss_mask_covers_exactly_the_assistant_tokens(tokenizer: Any) -> None:
    (example,), stats = data.tokenize_rows([GOOD], tokenizer, max_seq_length=1024)
    assert _labeled_text(tokenizer, example) == ASSISTANT_TEXT
    # Contiguous: every token after the prompt is learned, none before.
    first = next(i for i, t in enumerate(example.labels) if t != data.IGNORE_INDEX)
    assert all(t == data.IGNORE_INDEX for t in example.labels[:first])
    assert example.labels[first:] == example.input_ids[first:]
    prompt = tokenizer.decode(example.input_ids[:first])
    assert prompt.endswith("<|im_start|>assistant") and "churn in Q3?" in prompt
    assert stats.label_tokens == len(example) - first
    # Targets are shifted inside the example: the token before the answer predicts its first token.
    targets = example.targets()
    assert targets[first - 1] == example.input_ids[first] and targets[-1] == data.IGNORE_INDEX


def test_loss_mask_covers_every_assistant_turn_and_no_user_turn(tokenizer: Any) -> None:
    (example,), _ = data.tokenize_rows([MULTI_TURN], tokenizer, max_seq_length=1024)
    labeled = _labeled_text(tokenizer, example)
    assert (
        labeled
        == 'Hello!<|im_end|><tool_call>{"name": "top_products", "arguments": {"n": 3}}</tool_call><|im_end|>'
    )
    assert "top products?" not in labeled and "hi" not in labeled


def test_template_without_generation_tags_gives_the_same_mask(tokenizer: Any) -> None:
    tagged, _ = data.tokenize_rows([GOOD, MULTI_TURN], tokenizer, max_seq_length=1024)
    plain = tiny.build_byte_tokenizer()
    plain.chat_template = tokenizer.chat_template.replace("{%- generation -%}", "").replace(
        "{%- endgeneration -%}", ""
    )
    assert not data.has_generation_tags(plain)
    untagged, _ = data.tokenize_rows([GOOD, MULTI_TURN], plain, max_seq_length=1024)
    assert [e.labels for e in untagged] == [e.labels for e in tagged]


def test_tokenizer_without_template_gets_chatml(tokenizer: Any) -> None:
    bare = tiny.build_byte_tokenizer()
    bare.chat_template = None
    (example,), _ = data.tokenize_rows([GOOD], bare, max_seq_length=1024)
    assert bare.chat_template == data.DEFAULT_CHAT_TEMPLATE
    assert _labeled_text(bare, example) == ASSISTANT_TEXT


def test_the_default_template_shows_the_model_its_tools() -> None:
    """A row's ``tools`` reach the prompt (training, evaluation and serving render the same way): the
    definitions follow the system message in one system turn, and only the answer is learned."""
    bare = tiny.build_byte_tokenizer()
    bare.chat_template = None
    tool = {
        "type": "function",
        "function": {
            "name": "analyze_churn",
            "description": "Churn by quarter",
            "parameters": {"type": "object"},
        },
    }
    (example,), _ = data.tokenize_rows([{**GOOD, "tools": [tool]}], bare, max_seq_length=1024)
    first = next(i for i, t in enumerate(example.labels) if t != data.IGNORE_INDEX)
    prompt = str(bare.decode(example.input_ids[:first]))
    assert prompt.count("<|im_start|>system") == 1 and prompt.startswith("<|im_start|>system\nPick a tool.")
    assert '"description": "Churn by quarter"' in prompt and "<tools>" in prompt
    assert _labeled_text(bare, example) == ASSISTANT_TEXT
    (plain,), _ = data.tokenize_rows([GOOD], bare, max_seq_length=1024)
    assert "<tools>" not in str(bare.decode(plain.input_ids)), "no tools, no tools block"


def test_truncation_keeps_the_start_and_drops_examples_with_no_answer_left(tokenizer: Any) -> None:
    (full,), _ = data.tokenize_rows([GOOD], tokenizer, max_seq_length=1024)
    first = next(i for i, t in enumerate(full.labels) if t != data.IGNORE_INDEX)
    examples, stats = data.tokenize_rows([GOOD, GOOD], tokenizer, max_seq_length=first + 5)
    assert stats.truncated == 2 and [len(e) for e in examples] == [first + 5] * 2
    examples, stats = data.tokenize_rows([GOOD], tokenizer, max_seq_length=first)
    assert examples == [] and stats.dropped == 1


def test_config_reads_camel_case_and_resolves_paths_against_the_file(tmp_path: Path) -> None:
    path = tmp_path / "round1.yaml"
    path.write_text(
        "baseModel: models/tiny\ntrainFile: data/train.jsonl\noutputDir: out\nresumeFrom: auto\n"
        "hyperparameters: {learningRate: 0.01, batchSize: 4, packing: false, targetModules: [q_proj]}\n"
        "evaluation: {graderSpec: tool_selection, evalFile: data/eval.jsonl, limit: 10}\n"
    )
    config = cfg.load_config(path)
    assert config.base_model == tmp_path / "models/tiny"
    assert config.evaluation is not None and config.eval_path == tmp_path / "data/eval.jsonl"
    assert config.status_path == tmp_path / "out/status.json"
    assert config.resume_from == "auto"
    hp = config.hyperparameters
    assert (hp.learning_rate, hp.batch_size, hp.packing, hp.target_modules) == (0.01, 4, False, ["q_proj"])
    assert hp.epochs == 3 and hp.gradient_accumulation == 1 and config.device == "auto"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("trainFile: t.jsonl\noutputDir: o\n", "baseModel: Field required"),
        (
            "baseModel: m\ntrainFile: t\noutputDir: o\nhyperparameters: {learningRate: -1}\n",
            "hyperparameters.learningRate: Input should be greater than 0",
        ),
        ("baseModel: m\ntrainFile: t\noutputDir: o\nhyperparameters: {lr: 1}\n", "hyperparameters.lr: Extra"),
        ("baseModel: m\ntrainFile: t\noutputDir: o\ndevice: tpu\n", "device: Input should be"),
        (
            "baseModel: m\ntrainFile: t\noutputDir: o\nevaluation: {}\n",
            "evaluation needs evaluation.evalFile",
        ),
        ("- a list\n", "expected a mapping"),
        ("baseModel: [unclosed\n", "not valid YAML"),
    ],
    ids=[
        "missing-field",
        "bad-value",
        "unknown-key",
        "bad-device",
        "eval-without-data",
        "not-a-mapping",
        "bad-yaml",
    ],
)
def test_config_errors_name_the_field(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(cfg.ConfigError, match="trainer config") as info:
        cfg.load_config(path)
    assert expected in str(info.value)


def test_an_absolute_eval_file_is_kept(tmp_path: Path) -> None:
    """An absolute evaluation.evalFile must be used as given, not dropped in favour of the validation file."""
    from lightning_op.training import config as trainer_config

    eval_file = tmp_path / "elsewhere" / "eval.jsonl"
    path = tmp_path / "cfg" / "trainer.json"
    path.parent.mkdir()
    path.write_text(
        json.dumps(
            {
                "baseModel": "m",
                "trainFile": "t.jsonl",
                "outputDir": "out",
                "evaluation": {"graderSpec": "tool_selection", "evalFile": str(eval_file)},
            }
        )
    )
    loaded = trainer_config.load_config(path)
    assert loaded.evaluation is not None and loaded.evaluation.eval_file == eval_file
    assert loaded.train_file == path.parent / "t.jsonl"
