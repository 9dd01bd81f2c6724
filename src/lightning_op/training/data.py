"""Chat-format JSONL -> token rows for the local trainer: validation, loss masks, packing, batching.

``training.local`` calls this module; it reads the files ``datasets.build`` writes (one
``{"messages": [...], "tools"?: [...]}`` object per line, OpenAI's fine-tuning format) but validates
them itself: the import contract keeps ``training`` and ``datasets`` independent, and the trainer
image must refuse a bad file before it loads a model. ``read_rows`` raises ``DatasetError`` listing
every bad line number with what was wrong.

Tokenisation uses the model's chat template. The loss mask (labels ``-100`` outside assistant turns)
comes from the template's ``{% generation %}`` tags when it has them; otherwise it is computed by
rendering prefixes (the text up to each assistant turn, then through it) and mapping those character
spans to tokens. A tokenizer without any template gets ``DEFAULT_CHAT_TEMPLATE`` (ChatML with
Hermes-style ``<tool_call>`` JSON). Examples are truncated on the right to ``maxSeqLength``; one that
loses every assistant token is dropped and counted.

Batches are planned per optimizer step (``batchSize * gradientAccumulation`` rows), so halving the
micro-batch after an out-of-memory error, or resuming from a checkpoint, sees exactly the same rows
in the same order. Two layouts:

- packing (default): examples are bin-packed (first-fit decreasing) into rows of at most
  ``maxSeqLength`` tokens, with ``position_ids`` restarting at 0 for every example and no attention
  mask. transformers (>= 4.53; checked with 5.x) detects the restarts and builds a block-diagonal
  causal mask for eager/sdpa attention, and flash-attention 2 turns them into varlen ``cu_seqlens``,
  so examples never attend to each other and almost no pad tokens are computed. Targets are shifted
  per example, so the last token of one example never learns to predict the next example.
- padding: one example per row, right-padded to the longest row of the micro-batch, with examples
  bucketed by length (sorted within windows of 8 steps, then the steps shuffled) to keep padding low.

Order is deterministic: a ``random.Random`` seeded from (seed, epoch) shuffles each epoch.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lightning_op.api import episode as ep

IGNORE_INDEX = -100
MAX_REPORTED_PROBLEMS = 20

#: ChatML with Hermes-style tools and tool calls (the tool definitions in a leading system turn, as
#: Qwen's and Hermes' templates put them, the first system message's content before them) and
#: generation tags, for tokenizers that bring no template.
DEFAULT_CHAT_TEMPLATE = (
    "{%- set ns = namespace(skip_first=false) %}"
    "{%- if tools %}"
    "{{- '<|im_start|>system\n' }}"
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{{- (messages[0].get('content') or '') + '\n\n' }}"
    "{%- set ns.skip_first = true %}"
    "{%- endif %}"
    "{{- '# Tools\n\nYou may call one or more functions. Their signatures are within '"
    "'<tools></tools>:\n<tools>' }}"
    "{%- for tool in tools %}{{- '\n' + (tool | tojson) }}{%- endfor %}"
    '{{- \'\n</tools>\n\nFor each call, answer <tool_call>{"name": <function-name>, '
    '"arguments": <args-json-object>}</tool_call><|im_end|>\n\' }}'
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if loop.first and ns.skip_first %}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}"
    "{%- if message.get('content') %}{{- message['content'] }}{%- endif %}"
    "{%- for call in message.get('tool_calls') or [] %}"
    "{%- set arguments = call['function']['arguments'] %}"
    "{{- '<tool_call>{\"name\": \"' + call['function']['name'] + '\", \"arguments\": ' }}"
    "{{- arguments if arguments is string else arguments | tojson }}"
    "{{- '}</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>' }}"
    "{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + (message.get('content') or '') + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


class DatasetError(ValueError):
    """A dataset file cannot be trained on; ``problems`` lists ``(line number, what was wrong)``."""

    def __init__(self, path: Path | str, problems: Sequence[tuple[int, str]], total_bad: int | None = None):
        self.path = Path(path)
        self.problems = list(problems)
        bad = total_bad if total_bad is not None else len(self.problems)
        shown = "; ".join(f"line {n}: {why}" if n > 0 else why for n, why in self.problems)
        more = f" (and {bad - len(self.problems)} more)" if bad > len(self.problems) else ""
        noun = "line" if bad == 1 else "lines"
        if self.problems and self.problems[0][0] > 0:
            head = f"dataset {self.path}: {bad} bad {noun}: "
        else:
            head = f"dataset {self.path}: "
        super().__init__(head + shown + more)

    @property
    def line_numbers(self) -> list[int]:
        return [n for n, _ in self.problems if n > 0]


# --------------------------------------------------------------------------------------------- reading


def _row_problem(data: Any) -> str | None:
    """What is wrong with one parsed line, or ``None`` when it is a trainable chat row."""
    if not isinstance(data, dict):
        return f"expected a JSON object, got {type(data).__name__}"
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        return "no 'messages' list" if messages is None else "'messages' must be a non-empty list"
    tools = data.get("tools")
    if tools is not None and not isinstance(tools, list):
        return "'tools' must be a list"
    has_assistant = False
    for index, message in enumerate(messages):
        try:
            parsed = ep.Message.model_validate(message)
        except ValidationError as exc:
            return f"messages[{index}]: {ep.validation_reason(exc)}"
        if parsed.role == "assistant" and (parsed.content or parsed.tool_calls):
            has_assistant = True
    if not has_assistant:
        return "no assistant message with content or tool_calls (nothing to learn)"
    return None


def read_rows(path: str | Path, *, limit: int | None = None) -> list[dict[str, Any]]:
    """Read and validate a chat-format JSONL file; raises ``DatasetError`` naming every bad line.

    Blank lines are skipped. ``limit`` keeps the first N rows (after validating the whole file).
    """
    p = Path(path)
    try:
        handle = p.open("rb")
    except OSError as exc:
        raise DatasetError(p, [(0, f"cannot read ({exc.strerror or exc})")]) from None
    rows: list[dict[str, Any]] = []
    problems: list[tuple[int, str]] = []
    bad = 0
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                data = json.loads(raw)
            except UnicodeDecodeError:
                problem: str | None = "not valid UTF-8"
            except ValueError as exc:
                problem = f"not valid JSON ({exc})"
            else:
                problem = _row_problem(data)
            if problem is None:
                rows.append(data)
            else:
                bad += 1
                if len(problems) < MAX_REPORTED_PROBLEMS:
                    problems.append((number, problem))
    if problems:
        raise DatasetError(p, problems, bad)
    if not rows:
        raise DatasetError(p, [(0, "no rows (the file is empty)")])
    return rows[:limit] if limit is not None else rows


# ---------------------------------------------------------------------------------------- tokenizing


@dataclass(frozen=True)
class Example:
    """One tokenized row: ``labels[i]`` is ``input_ids[i]`` on assistant tokens, else ``IGNORE_INDEX``."""

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    def targets(self) -> list[int]:
        """Next-token targets inside this example: ``labels`` shifted left, the last one ignored."""
        return self.labels[1:] + [IGNORE_INDEX]


@dataclass
class TokenizeStats:
    examples: int = 0
    truncated: int = 0
    dropped: int = 0
    tokens: int = 0
    label_tokens: int = 0


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give a template-less tokenizer ``DEFAULT_CHAT_TEMPLATE``; returns whether one was set."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return True


def has_generation_tags(tokenizer: Any) -> bool:
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and bool(_GENERATION_TAG.search(template))


def _render(tokenizer: Any, messages: list[dict[str, Any]], tools: Any, *, generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt
    )
    return str(text)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def assistant_token_mask(
    tokenizer: Any, messages: list[dict[str, Any]], tools: Any = None
) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation and a 0/1 mask of the assistant tokens."""
    if has_generation_tags(tokenizer):
        out = tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids = list(out["input_ids"])
        mask = [int(m) for m in out["assistant_masks"]]
        if any(mask):
            return ids, mask
    return _mask_by_prefixes(tokenizer, messages, tools)


def _mask_by_prefixes(
    tokenizer: Any, messages: list[dict[str, Any]], tools: Any
) -> tuple[list[int], list[int]]:
    """The assistant mask for templates without generation tags: render prefixes, map characters."""
    full = _render(tokenizer, messages, tools, generation_prompt=False)
    spans: list[tuple[int, int]] = []
    for index, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        start_text = _render(tokenizer, messages[:index], tools, generation_prompt=True) if index else ""
        end_text = _render(tokenizer, messages[: index + 1], tools, generation_prompt=False)
        # Templates that rewrite earlier turns (e.g. drop past reasoning) break prefix stability:
        # fall back to the longest common prefix so the mask never covers prompt text.
        start = _common_prefix(start_text, full)
        end = _common_prefix(end_text, full)
        if end > start:
            spans.append((start, end))
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        mask = [int(any(s <= a < e for s, e in spans)) for a, _ in enc["offset_mapping"]]
        return ids, mask
    ids = _ids(tokenizer, full)
    mask = [0] * len(ids)
    for s, e in spans:
        a, b = len(_ids(tokenizer, full[:s])), len(_ids(tokenizer, full[:e]))
        for i in range(a, min(b, len(ids))):
            mask[i] = 1
    return ids, mask


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def tokenize_rows(
    rows: Sequence[dict[str, Any]], tokenizer: Any, max_seq_length: int
) -> tuple[list[Example], TokenizeStats]:
    """Tokenize chat rows with the loss on assistant tokens only, truncated to ``max_seq_length``."""
    ensure_chat_template(tokenizer)
    stats = TokenizeStats()
    examples: list[Example] = []
    for row in rows:
        ids, mask = assistant_token_mask(tokenizer, list(row["messages"]), row.get("tools"))
        if len(ids) > max_seq_length:
            stats.truncated += 1
            ids, mask = ids[:max_seq_length], mask[:max_seq_length]
        labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True)]
        # The first token has no predecessor, so only labels from index 1 on are ever learned.
        if not any(label != IGNORE_INDEX for label in labels[1:]):
            stats.dropped += 1
            continue
        examples.append(Example(ids, labels))
        stats.examples += 1
        stats.tokens += len(ids)
        stats.label_tokens += sum(1 for label in labels[1:] if label != IGNORE_INDEX)
    return examples, stats


# -------------------------------------------------------------------------------------------- batching


@dataclass(frozen=True)
class Row:
    """One row of a batch: the indices of the examples it holds, in order."""

    examples: tuple[int, ...]


@dataclass
class Batch:
    """Tensors for one forward pass. ``targets`` are already shifted (no further shift needed)."""

    input_ids: Any
    targets: Any
    position_ids: Any | None
    attention_mask: Any | None
    #: real (non-pad) tokens in the batch
    tokens: int
    #: tokens that carry a target (the loss's denominator)
    target_tokens: int
    #: flattened batches (one row): example boundaries ``[0, l1, l1+l2, ...]`` and the longest example,
    #: passed to flash-attention as ``cu_seq_lens_q/k`` and ``max_length_q/k`` (no per-layer sync)
    cu_seqlens: Any | None = None
    max_length: int | None = None


def pack_rows(lengths: Sequence[int], capacity: int, window: int = 256) -> list[Row]:
    """First-fit-decreasing bin packing of examples into rows of at most ``capacity`` tokens.

    Only the last ``window`` open rows are tried for each example, which keeps it O(n * window) on
    large datasets at a packing efficiency that stays within a percent of full first-fit.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    space: list[int] = []
    for i in order:
        size = lengths[i]
        placed = False
        for b in range(max(0, len(bins) - window), len(bins)):
            if space[b] >= size:
                bins[b].append(i)
                space[b] -= size
                placed = True
                break
        if not placed:
            bins.append([i])
            space.append(capacity - size)
    return [Row(tuple(b)) for b in bins]


@dataclass
class EpochPlan:
    """The rows of every optimizer step of one epoch, in training order."""

    steps: list[list[Row]] = field(default_factory=list)


def plan_epoch(
    lengths: Sequence[int],
    *,
    rows_per_step: int,
    max_seq_length: int,
    packing: bool,
    seed: int,
    epoch: int,
    packed: list[Row] | None = None,
) -> EpochPlan:
    """Deterministic order of one epoch: the same (seed, epoch) always gives the same steps."""
    rng = random.Random(f"{seed}:{epoch}")
    if packing:
        rows = list(packed if packed is not None else pack_rows(lengths, max_seq_length))
        rng.shuffle(rows)
        return EpochPlan([rows[i : i + rows_per_step] for i in range(0, len(rows), rows_per_step)])
    order = list(range(len(lengths)))
    rng.shuffle(order)
    bucket = rows_per_step * 8
    steps: list[list[Row]] = []
    for start in range(0, len(order), bucket):
        window = sorted(order[start : start + bucket], key=lambda i: lengths[i])
        steps.extend(
            [Row((i,)) for i in window[j : j + rows_per_step]] for j in range(0, len(window), rows_per_step)
        )
    rng.shuffle(steps)
    return EpochPlan(steps)


def micro_batches(rows: Sequence[Row], micro_batch: int) -> Iterator[Sequence[Row]]:
    for start in range(0, len(rows), micro_batch):
        yield rows[start : start + micro_batch]


def collate(
    examples: Sequence[Example], rows: Sequence[Row], *, pad_id: int, packing: bool, flatten: bool = False
) -> Batch:
    """Build the tensors of one micro-batch, padded on the right to its longest row.

    ``flatten`` (with packing) concatenates the whole micro-batch into one row with no padding at all,
    as flash-attention's varlen kernels want it (transformers only reads packed ``position_ids`` for
    flash-attention when the batch has one row); eager/sdpa attention keep rows, since their mask is
    quadratic in the row length.
    """
    import torch

    if flatten and packing:
        return _flattened(examples, rows)

    row_ids: list[list[int]] = []
    row_targets: list[list[int]] = []
    row_positions: list[list[int]] = []
    for row in rows:
        ids: list[int] = []
        targets: list[int] = []
        positions: list[int] = []
        for index in row.examples:
            example = examples[index]
            ids.extend(example.input_ids)
            targets.extend(example.targets())
            positions.extend(range(len(example)))
        row_ids.append(ids)
        row_targets.append(targets)
        row_positions.append(positions)
    width = max(len(ids) for ids in row_ids)
    tokens = sum(len(ids) for ids in row_ids)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets_t = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    target_tokens = 0
    for r, (ids, targets, positions) in enumerate(zip(row_ids, row_targets, row_positions, strict=True)):
        n = len(ids)
        input_ids[r, :n] = torch.tensor(ids, dtype=torch.long)
        targets_t[r, :n] = torch.tensor(targets, dtype=torch.long)
        position_ids[r, :n] = torch.tensor(positions, dtype=torch.long)
        # The pad tail is a segment of its own: nothing real attends to it (it comes last, causal).
        position_ids[r, n:] = torch.arange(width - n, dtype=torch.long)
        attention[r, :n] = 1
        target_tokens += sum(1 for t in targets if t != IGNORE_INDEX)
    if packing:
        return Batch(input_ids, targets_t, position_ids, None, tokens, target_tokens)
    return Batch(input_ids, targets_t, None, attention, tokens, target_tokens)


def _flattened(examples: Sequence[Example], rows: Sequence[Row]) -> Batch:
    import torch

    ids: list[int] = []
    targets: list[int] = []
    positions: list[int] = []
    bounds = [0]
    for row in rows:
        for index in row.examples:
            example = examples[index]
            ids.extend(example.input_ids)
            targets.extend(example.targets())
            positions.extend(range(len(example)))
            bounds.append(len(ids))
    lengths = [b - a for a, b in zip(bounds, bounds[1:], strict=False)]
    return Batch(
        input_ids=torch.tensor([ids], dtype=torch.long),
        targets=torch.tensor([targets], dtype=torch.long),
        position_ids=torch.tensor([positions], dtype=torch.long),
        attention_mask=None,
        tokens=len(ids),
        target_tokens=sum(1 for t in targets if t != IGNORE_INDEX),
        cu_seqlens=torch.tensor(bounds, dtype=torch.int32),
        max_length=max(lengths),
    )
