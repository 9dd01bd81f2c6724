"""Stream labeled episodes into a chat-format JSONL training file and a validation file.

``build_dataset`` takes the episode dicts a store's ``iter_json`` yields (oldest first), keeps those
with ``reward >= min_reward``, turns each into a row (``datasets.rows``), drops duplicates, splits
train/validation by a stable hash and writes both files incrementally, so a million episodes build in
constant memory apart from one 16-byte digest per distinct row (about 80 MB per million). It returns
``DatasetStats``; the caller keeps them as the store record ``(RECORD_KIND, stats.name)``.

Decisions, in the order a row meets them:

- **Filter**: ``labeled`` episodes of ``agent_id`` with ``reward >= min_reward`` (and ``timestamp >=
  since``). ``BuildOptions.query_filter()`` gives the store query; the reward is checked again here.
- **Duplicates**: rows are canonical (see ``rows``), so two episodes with the same normalised messages
  give the same bytes; the first (oldest) is kept. Key: BLAKE2b-128 of the line.
- **Cap**: ``max_episodes`` counts distinct rows written, oldest first, so rebuilding with the same
  settings after more traffic arrived gives the same dataset.
- **Split**: a row goes to validation when the first 8 bytes of its digest, read as an integer, fall
  below ``validation_fraction * 2**64``: a row stays on its side whatever else is in the dataset. If
  every row hashes to validation (tiny datasets), the validation rows become the training file.
- **Fingerprint**: ``sha256`` is computed over the exact bytes written to the training file (what
  ``sha256sum PATH`` prints), ``validation_sha256`` likewise.
- **Tokens**: an estimate, ``ceil(UTF-8 bytes of the JSON line / 4)`` summed over rows (about four
  bytes per token for English BPE; JSON punctuation stands in for the chat template's special tokens).
  It sizes jobs; the trainer counts real tokens with the model's tokenizer.

Files are written under a temporary name in the target directory and renamed at the end, so an
interrupted build never leaves a half file that looks complete. The caller's ``save_record`` runs
between the two: a dataset whose record could not be saved is never moved into place, and an
earlier dataset at the same paths is only replaced once the new one's record is saved.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from lightning_op.datasets import rows

log = logging.getLogger(__name__)

#: the store record kind that keeps a dataset's statistics
RECORD_KIND = "dataset"
OUTPUT_FORMATS = ("jsonl",)
TOKEN_ESTIMATE = "ceil(utf8_bytes_of_line / 4)"
#: dataset names become file names and store record names
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

_FLUSH_BYTES = 1 << 20
_SPLIT_SPACE = 1 << 64


class EmptyDatasetError(ValueError):
    """No episode matched (or none could become a row); nothing was written."""

    def __init__(self, agent_id: str, min_reward: float, scanned: int, skipped: Mapping[str, int]) -> None:
        self.agent_id = agent_id
        self.min_reward = min_reward
        self.scanned = scanned
        self.skipped = dict(skipped)
        detail = ""
        if self.skipped:
            reasons = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
            detail = f" ({scanned} matched but none could become a training row: {reasons})"
        super().__init__(
            f"no episodes of agent {agent_id} with reward >= {min_reward:g}{detail}: "
            "lower the minimum reward or label more episodes"
        )


@dataclass(frozen=True)
class BuildOptions:
    """What goes into a dataset. Raises ``ValueError`` naming the bad field."""

    agent_id: str
    min_reward: float = 0.7
    since: datetime | None = None
    max_episodes: int | None = None
    validation_fraction: float = 0.1
    system_prompt: str = rows.DEFAULT_SYSTEM_PROMPT
    output_format: str = "jsonl"

    def __post_init__(self) -> None:
        if not self.agent_id:
            raise ValueError("agent id is empty: name the agent whose episodes to use")
        if not 0.0 <= self.min_reward <= 1.0 or math.isnan(self.min_reward):
            raise ValueError(f"minimum reward {self.min_reward} is outside 0..1")
        if self.max_episodes is not None and self.max_episodes < 1:
            raise ValueError(f"max episodes {self.max_episodes} must be at least 1 (or unset for no cap)")
        if not 0.0 <= self.validation_fraction < 1.0 or math.isnan(self.validation_fraction):
            raise ValueError(
                f"validation fraction {self.validation_fraction} must be >= 0 and < 1 "
                "(0 for no validation file)"
            )
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(
                f"output format {self.output_format!r} is not supported: use {', '.join(OUTPUT_FORMATS)}"
            )

    def query_filter(self) -> dict[str, Any]:
        """Keyword arguments for ``store.base.EpisodeQuery`` that select this dataset's episodes."""
        return {
            "agent_id": self.agent_id,
            "since": self.since,
            "labeled": True,
            "min_reward": self.min_reward,
        }

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "minReward": self.min_reward,
            "since": self.since.isoformat() if self.since else None,
            "maxEpisodes": self.max_episodes,
            "validationFraction": self.validation_fraction,
            "systemPrompt": self.system_prompt,
            "outputFormat": self.output_format,
            "tokenEstimate": TOKEN_ESTIMATE,
        }


@dataclass
class DatasetStats:
    """What a build wrote. ``to_json_dict`` is the store record and the ``-o json`` output.

    ``episodes``/``tokens`` and the rewards cover both files; ``path``/``sha256`` are the training file.
    ``min_reward`` is the lowest reward *in* the dataset; the filter is ``settings["minReward"]``.
    """

    name: str
    agent_id: str
    path: str
    sha256: str
    bytes: int
    episodes: int
    train_episodes: int
    validation_episodes: int
    tokens: int
    avg_reward: float
    min_reward: float
    max_reward: float
    scanned: int
    duplicates_removed: int
    created: datetime
    validation_path: str | None = None
    validation_sha256: str | None = None
    validation_bytes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    format: str = "jsonl"

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "agentId": self.agent_id,
            "format": self.format,
            "path": self.path,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "episodes": self.episodes,
            "trainEpisodes": self.train_episodes,
            "validationEpisodes": self.validation_episodes,
            "validationPath": self.validation_path,
            "validationSha256": self.validation_sha256,
            "validationBytes": self.validation_bytes,
            "tokens": self.tokens,
            "avgReward": self.avg_reward,
            "minReward": self.min_reward,
            "maxReward": self.max_reward,
            "scanned": self.scanned,
            "duplicatesRemoved": self.duplicates_removed,
            "skipped": dict(self.skipped),
            "created": self.created.isoformat(),
            "settings": dict(self.settings),
        }

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> DatasetStats:
        """Read a store record back (raises ``ValueError`` naming a missing or bad key)."""
        try:
            created = datetime.fromisoformat(str(data["created"]))
            return cls(
                name=str(data["name"]),
                agent_id=str(data["agentId"]),
                format=str(data.get("format", "jsonl")),
                path=str(data["path"]),
                sha256=str(data["sha256"]),
                bytes=int(data.get("bytes", 0)),
                episodes=int(data["episodes"]),
                train_episodes=int(data.get("trainEpisodes", data["episodes"])),
                validation_episodes=int(data.get("validationEpisodes", 0)),
                validation_path=data.get("validationPath"),
                validation_sha256=data.get("validationSha256"),
                validation_bytes=int(data.get("validationBytes", 0)),
                tokens=int(data["tokens"]),
                avg_reward=float(data["avgReward"]),
                min_reward=float(data["minReward"]),
                max_reward=float(data["maxReward"]),
                scanned=int(data.get("scanned", 0)),
                duplicates_removed=int(data.get("duplicatesRemoved", 0)),
                skipped={str(k): int(v) for k, v in dict(data.get("skipped") or {}).items()},
                created=created if created.tzinfo else created.replace(tzinfo=UTC),
                settings=dict(data.get("settings") or {}),
            )
        except KeyError as exc:
            raise ValueError(f"dataset record has no {exc.args[0]!r}: rebuild it with build-dataset") from exc
        except (TypeError, ValueError) as exc:
            raise ValueError(f"dataset record is malformed ({exc}): rebuild it with build-dataset") from exc


def check_name(name: str) -> str:
    """Return ``name`` if it can be a dataset name (it becomes a file name), else raise ``ValueError``."""
    if not NAME_PATTERN.match(name):
        raise ValueError(
            f"dataset name {name!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def validation_path_for(path: Path) -> Path:
    """Where the validation rows of the training file ``path`` go: ``name.validation.jsonl`` beside it."""
    return path.with_name(f"{path.stem}.validation{path.suffix or '.jsonl'}")


def estimate_tokens(line: bytes) -> int:
    """The token estimate of one JSONL line (see the module docstring)."""
    return (len(line) + 3) >> 2


class _Sink:
    """A JSONL file written in ~1 MiB chunks, hashed as written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = 0
        self.bytes = 0
        self.tokens = 0
        self._sha = hashlib.sha256()
        self._buf = bytearray()
        self._file: IO[bytes] = open(path, "wb")  # noqa: SIM115 - closed in finish()/discard()

    def write(self, line: bytes) -> None:
        self._buf += line
        self._buf += b"\n"
        self.rows += 1
        self.tokens += (len(line) + 3) >> 2
        if len(self._buf) >= _FLUSH_BYTES:
            self._flush()

    def _flush(self) -> None:
        self._file.write(self._buf)
        self._sha.update(self._buf)
        self.bytes += len(self._buf)
        self._buf.clear()

    def finish(self) -> str:
        self._flush()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return self._sha.hexdigest()

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)


def build_dataset(
    episodes: Iterable[Mapping[str, Any]],
    options: BuildOptions,
    *,
    output: Path | None = None,
    output_dir: Path | None = None,
    name: str | None = None,
    save_record: Callable[[DatasetStats], object] | None = None,
    on_progress: Callable[[int], None] | None = None,
    progress_every: int = 10_000,
) -> DatasetStats:
    """Write the dataset and return its statistics.

    ``episodes``: episode dicts, oldest first (``store.iter_json(EpisodeQuery(**options.query_filter()))``).
    The training file is ``output`` if given, else ``output_dir / f"{name}.jsonl"``; the validation file
    sits beside it (``validation_path_for``). ``name`` defaults to ``<agent>-<first 12 hex of sha256>``,
    so the same data always gets the same name. ``on_progress(scanned)`` is called every
    ``progress_every`` episodes read and once at the end.

    ``save_record(stats)`` keeps the statistics (the caller's store record). It is called once both
    files are complete under temporary names, before they are moved to the paths ``stats`` names;
    when it raises, the temporary files are removed and the exception propagates, so a dataset
    without a record never appears and an earlier dataset at the same paths stays as it was. Once
    it returned, a dataset built without a validation file also removes an earlier
    ``validation_path_for(training file)``, which belonged to the training file it replaced.

    Raises ``EmptyDatasetError`` when no row was written (and leaves no file behind), ``OSError``
    when the files cannot be written.
    """
    if (output is None) == (output_dir is None):
        raise ValueError("give exactly one of output (a file path) or output_dir (a directory)")
    if name is not None:
        check_name(name)
    target_dir = output.parent if output is not None else output_dir
    assert target_dir is not None
    made_dir = not target_dir.is_dir()
    target_dir.mkdir(parents=True, exist_ok=True)
    # no agent id in the name: with a long one (up to 253 characters) it passed the 255-byte limit
    partial = f".build.{os.getpid()}.{id(options):x}"
    train = _Sink(target_dir / f"{partial}.train.partial")
    validation: _Sink | None = None
    try:
        if options.validation_fraction > 0:
            validation = _Sink(target_dir / f"{partial}.validation.partial")
        stats = _stream(episodes, options, train, validation, on_progress, progress_every)
        if not train.rows and (validation is None or not validation.rows):
            raise EmptyDatasetError(options.agent_id, options.min_reward, stats.scanned, stats.skipped)
        if not train.rows and validation is not None:
            # Every row hashed to validation (only with a handful of rows): train on them instead.
            train, validation = validation, train
        train_sha = train.finish()
        if validation is not None and not validation.rows:
            validation.discard()
            validation = None
        validation_sha = validation.finish() if validation is not None else None
        final_name = name or f"{options.agent_id}-{train_sha[:12]}"
        final = output if output is not None else target_dir / f"{final_name}.jsonl"
        final_validation = validation_path_for(final)
        # The record names the files where they will be; the directory is resolved but not the
        # file, as os.replace puts a file in place of a symlink rather than writing through it.
        where = target_dir.resolve()
        result = _stats(
            options,
            stats,
            final_name,
            train,
            validation,
            where / final.name,
            where / final_validation.name,
            train_sha,
            validation_sha,
        )
        for path in (final, final_validation):
            if path.is_dir():
                raise IsADirectoryError(f"{path} is a directory: name another dataset file or directory")
        if save_record is not None:
            save_record(result)
        _publish(result.name, train, validation, final, final_validation, saved=save_record is not None)
    except BaseException:
        train.discard()
        if validation is not None:
            validation.discard()
        if made_dir:
            with contextlib.suppress(OSError):
                target_dir.rmdir()
        raise

    log.info(
        "dataset %s: %d episodes (%d train, %d validation), %d duplicates removed, sha256 %s",
        result.name,
        result.episodes,
        result.train_episodes,
        result.validation_episodes,
        result.duplicates_removed,
        result.sha256,
    )
    return result


def _stats(
    options: BuildOptions,
    counts: _Counts,
    name: str,
    train: _Sink,
    validation: _Sink | None,
    path: Path,
    validation_path: Path,
    train_sha: str,
    validation_sha: str | None,
) -> DatasetStats:
    valid_rows = validation.rows if validation is not None else 0
    return DatasetStats(
        name=name,
        agent_id=options.agent_id,
        format=options.output_format,
        path=str(path),
        sha256=train_sha,
        bytes=train.bytes,
        episodes=train.rows + valid_rows,
        train_episodes=train.rows,
        validation_episodes=valid_rows,
        validation_path=str(validation_path) if validation is not None else None,
        validation_sha256=validation_sha,
        validation_bytes=validation.bytes if validation is not None else 0,
        tokens=train.tokens + (validation.tokens if validation is not None else 0),
        avg_reward=counts.reward_sum / counts.written,
        min_reward=counts.reward_min,
        max_reward=counts.reward_max,
        scanned=counts.scanned,
        duplicates_removed=counts.duplicates,
        skipped=counts.skipped,
        created=datetime.now(UTC),
        settings=options.to_json_dict(),
    )


def _publish(
    name: str, train: _Sink, validation: _Sink | None, final: Path, final_validation: Path, *, saved: bool
) -> None:
    """Move the finished files into place (renames within one directory)."""
    try:
        os.replace(train.path, final)
        if validation is not None:
            os.replace(validation.path, final_validation)
        else:
            final_validation.unlink(missing_ok=True)
    except OSError as exc:
        if not saved:
            raise
        # Rare (the temporary files sit in the same directory), but the record now names files
        # that are not in place: say so, as dataset-info will.
        raise OSError(
            f"dataset {name}: the record was saved but its files could not be moved to {final} "
            f"({exc.strerror or exc}); run build-dataset again"
        ) from exc


@dataclass
class _Counts:
    scanned: int = 0
    written: int = 0
    duplicates: int = 0
    reward_sum: float = 0.0
    reward_min: float = math.inf
    reward_max: float = -math.inf
    skipped: dict[str, int] = field(default_factory=dict)


def _stream(
    episodes: Iterable[Mapping[str, Any]],
    options: BuildOptions,
    train: _Sink,
    validation: _Sink | None,
    on_progress: Callable[[int], None] | None,
    progress_every: int,
) -> _Counts:
    """The hot loop: kept flat with locals bound once, as it runs a million times per build."""
    counts = _Counts()
    system = rows.system_message(options.system_prompt)
    min_reward = options.min_reward
    cap = options.max_episodes or -1
    threshold = int(options.validation_fraction * _SPLIT_SPACE)
    seen: set[bytes] = set()
    seen_add = seen.add
    blake2b = hashlib.blake2b
    from_bytes = int.from_bytes
    row_messages = rows.row_messages
    encode = rows.encode_row
    skip = rows.SkipEpisode
    train_write = train.write
    validation_write = validation.write if validation is not None else train_write
    skipped = counts.skipped
    scanned = written = duplicates = 0
    reward_sum = 0.0
    reward_min = math.inf
    reward_max = -math.inf
    next_progress = progress_every if on_progress is not None else -1
    iterator: Iterator[Mapping[str, Any]] = iter(episodes)
    try:
        for episode in iterator:
            scanned += 1
            if scanned == next_progress:
                assert on_progress is not None
                on_progress(scanned)
                next_progress += progress_every
            reward = episode.get("reward")
            if reward is None or not reward >= min_reward:
                continue
            try:
                line = encode(row_messages(episode, system))
            except skip as exc:
                skipped[exc.reason] = skipped.get(exc.reason, 0) + 1
                continue
            digest = blake2b(line, digest_size=16).digest()
            if digest in seen:
                duplicates += 1
                continue
            seen_add(digest)
            if from_bytes(digest[:8]) < threshold:
                validation_write(line)
            else:
                train_write(line)
            written += 1
            reward_sum += reward
            if reward < reward_min:
                reward_min = reward
            if reward > reward_max:
                reward_max = reward
            if written == cap:
                break
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
    if on_progress is not None:
        on_progress(scanned)
    counts.scanned, counts.written, counts.duplicates = scanned, written, duplicates
    counts.reward_sum, counts.reward_min, counts.reward_max = reward_sum, reward_min, reward_max
    return counts
