"""Promotion and its check on live traffic: reward statistics of episodes split by ``modelVersion``.

``compare_versions(store, agent_id, before, after, since)`` sums up the live episodes the capture
client recorded for two model versions (average reward of the labeled ones, error rate, counts);
``verification_verdict`` turns a comparison into Passed / Failed / Pending with the limits of a
ModelPromotion's ``spec.verification``. ``promote`` records a promotion (store record
``("promotion", id)``: previous and promoted model, adapter, job) after asking a running
``lightning-op serve`` to switch to the adapter (``POST /admin/adapter``).

The CLI (``promote-model``, ``compare-versions``) and the ModelPromotion controller share these
functions. Talks to ``store.base`` and, for the server, plain HTTP (httpx); never prints.
"""

from __future__ import annotations

import enum
import math
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lightning_op.store import base as store_base
from lightning_op.training import rounds

RECORD_KIND = "promotion"
TRAINING_RECORD_KIND = "training-job"
#: the name rows of episodes without a ``modelVersion`` get
UNKNOWN_VERSION = "(none)"
SERVER_TIMEOUT_S = 120.0


class PromotionError(ValueError):
    """A promotion cannot be done as asked (no adapter, server refused); the message says why."""


@dataclass
class VersionStats:
    """Live episodes of one model version."""

    model_version: str
    episodes: int = 0
    labeled: int = 0
    errors: int = 0
    avg_reward: float | None = None
    std_reward: float | None = None
    min_reward: float | None = None
    max_reward: float | None = None
    first: datetime | None = None
    last: datetime | None = None
    rewards: list[float] = field(default_factory=list, repr=False)

    @property
    def error_rate(self) -> float | None:
        """Errors per episode; None with no episodes (nothing measured, not a perfect record)."""
        return self.errors / self.episodes if self.episodes else None

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "modelVersion": self.model_version,
            "episodes": self.episodes,
            "labeled": self.labeled,
            "avgReward": _rounded(self.avg_reward),
            "stdReward": _rounded(self.std_reward),
            "minReward": self.min_reward,
            "maxReward": self.max_reward,
            "errorRate": _rounded(self.error_rate),
            "errors": self.errors,
            "first": self.first.isoformat() if self.first else None,
            "last": self.last.isoformat() if self.last else None,
        }


def _rounded(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def summarise_versions(episodes: Iterable[Mapping[str, Any]]) -> dict[str, VersionStats]:
    """Group episode dicts (``Episode.to_json_dict`` shape) by ``modelVersion`` and sum them up."""
    stats: dict[str, VersionStats] = {}
    for episode in episodes:
        version = str(episode.get("modelVersion") or UNKNOWN_VERSION)
        entry = stats.setdefault(version, VersionStats(model_version=version))
        entry.episodes += 1
        if episode.get("error"):
            entry.errors += 1
        reward = episode.get("reward")
        if episode.get("labeled") and isinstance(reward, int | float) and not isinstance(reward, bool):
            entry.labeled += 1
            entry.rewards.append(float(reward))
        when = _parse_time(episode.get("timestamp"))
        if when is not None:
            entry.first = when if entry.first is None or when < entry.first else entry.first
            entry.last = when if entry.last is None or when > entry.last else entry.last
    for entry in stats.values():
        if entry.rewards:
            n = len(entry.rewards)
            mean = sum(entry.rewards) / n
            entry.avg_reward = mean
            entry.std_reward = math.sqrt(sum((r - mean) ** 2 for r in entry.rewards) / n)
            entry.min_reward, entry.max_reward = min(entry.rewards), max(entry.rewards)
    return stats


def version_stats(
    store: store_base.EpisodeStore, agent_id: str, since: datetime | None = None
) -> dict[str, VersionStats]:
    """Every model version of the agent's episodes (since ``since``), with its statistics."""
    query = store_base.EpisodeQuery(agent_id=agent_id, since=since)
    return summarise_versions(store.iter_json(query))


@dataclass
class Comparison:
    """Two versions side by side, ``after`` minus ``before``."""

    agent_id: str
    before: VersionStats
    after: VersionStats
    since: datetime | None = None
    #: every model version of the agent's episodes in the window, the one seen last at the end
    seen: tuple[str, ...] = ()

    @property
    def reward_delta(self) -> float | None:
        if self.before.avg_reward is None or self.after.avg_reward is None:
            return None
        return self.after.avg_reward - self.before.avg_reward

    @property
    def error_rate_delta(self) -> float | None:
        """None when either version has no episodes."""
        before, after = self.before.error_rate, self.after.error_rate
        return None if before is None or after is None else after - before

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "agentId": self.agent_id,
            "since": self.since.isoformat() if self.since else None,
            "before": self.before.to_json_dict(),
            "after": self.after.to_json_dict(),
            "rewardDelta": _rounded(self.reward_delta),
            "errorRateDelta": _rounded(self.error_rate_delta),
        }


def default_versions(
    store: store_base.EpisodeStore, agent_id: str, stats: Mapping[str, VersionStats]
) -> tuple[str, str]:
    """Versions to compare when none were named: the agent's latest promotion (previous -> promoted;
    a promotion that could not record the previous model compares the promoted one with the version
    seen last besides it, as the operator's verification does), else its two most recently seen
    versions (older one first)."""
    latest = latest_promotion(store, agent_id=agent_id)
    promoted = str(latest.get("promotedModel") or "") if latest is not None else ""
    if latest is not None and latest.get("previousModel") and promoted:
        return str(latest["previousModel"]), promoted
    if promoted:
        others = _by_last_seen(stats, besides=promoted)
        if others:
            return others[-1].model_version, promoted
    seen = _by_last_seen(stats)
    if len(seen) < 2:
        names = ", ".join(s.model_version for s in stats.values()) or "none"
        raise ValueError(
            f"agent {agent_id} has episodes of fewer than two model versions ({names}) and no promotion: "
            "name them with --before and --after"
        )
    return seen[-2].model_version, seen[-1].model_version


def compare_versions(
    store: store_base.EpisodeStore,
    agent_id: str,
    before: str | None = None,
    after: str | None = None,
    since: datetime | None = None,
) -> Comparison:
    """Reward statistics of the agent's live episodes of ``before`` and ``after`` (see ``default_versions``).

    A version with no episodes is reported with zero episodes, not an error: right after a promotion
    the new version has none yet, which ``verification_verdict`` reports as Pending.
    """
    stats = version_stats(store, agent_id, since)
    if before is None or after is None:
        default_before, default_after = default_versions(store, agent_id, stats)
        before = before or default_before
        after = after or default_after
    return _comparison(agent_id, stats, before, after, since)


def verification_comparison(
    store: store_base.EpisodeStore,
    agent_id: str,
    previous: str | None,
    promoted: str,
    since: datetime,
    promoted_since: datetime | None = None,
) -> Comparison:
    """A promotion's live check: ``promoted`` against ``previous``, episodes since ``since``; of
    ``promoted``, only those since ``promoted_since`` (the promotion: its episodes from an earlier
    promotion of the same model, rolled back since, say nothing about this one).

    ``previous`` is None when the container's model name was not a plain env value (a ConfigMap or
    Secret reference, which the operator does not read): the capture client records the resolved
    name, so the version compared with is the one other than ``promoted`` seen last in the window,
    the model that served just before the promotion."""
    episodes: Iterable[Mapping[str, Any]] = store.iter_json(
        store_base.EpisodeQuery(agent_id=agent_id, since=since)
    )
    if promoted_since is not None:
        episodes = (e for e in episodes if not _promoted_before(e, promoted, promoted_since))
    stats = summarise_versions(episodes)
    if previous is None:
        others = _by_last_seen(stats, besides=promoted)
        previous = others[-1].model_version if others else UNKNOWN_VERSION
    return _comparison(agent_id, stats, previous, promoted, since)


def _promoted_before(episode: Mapping[str, Any], promoted: str, promoted_since: datetime) -> bool:
    if str(episode.get("modelVersion") or "") != promoted:
        return False
    when = _parse_time(episode.get("timestamp"))
    return when is not None and when < promoted_since


def _by_last_seen(stats: Mapping[str, VersionStats], besides: str | None = None) -> list[VersionStats]:
    """The named versions (not ``UNKNOWN_VERSION``, not ``besides``), the one seen last at the end."""
    return sorted(
        (s for s in stats.values() if s.model_version not in (UNKNOWN_VERSION, besides)),
        key=lambda s: s.last or datetime.min.replace(tzinfo=UTC),
    )


def _comparison(
    agent_id: str, stats: Mapping[str, VersionStats], before: str, after: str, since: datetime | None
) -> Comparison:
    return Comparison(
        agent_id=agent_id,
        before=stats.get(before) or VersionStats(model_version=before),
        after=stats.get(after) or VersionStats(model_version=after),
        since=since,
        seen=tuple(s.model_version for s in _by_last_seen(stats)),
    )


class VerdictStatus(enum.StrEnum):
    PASSED = "Passed"
    FAILED = "Failed"
    #: not enough labeled episodes of the new version yet
    PENDING = "Pending"


@dataclass(frozen=True)
class Verdict:
    status: VerdictStatus
    message: str
    reasons: tuple[str, ...] = ()

    def to_json_dict(self) -> dict[str, Any]:
        return {"status": self.status.value, "message": self.message, "reasons": list(self.reasons)}


#: scores and rates are sums of floats: a difference this small is no difference, so a limit of 0.1
#: holds for 0.9 -> 0.8 (which floats make 0.1000000000000002)
SCORE_TOLERANCE = rounds.METRIC_TOLERANCE


def verification_verdict(
    comparison: Comparison,
    max_reward_drop: float,
    max_error_rate_increase: float,
    min_episodes: int,
) -> Verdict:
    """Did the promoted version hold up on live traffic?

    Failed when, with ``min_episodes`` labeled episodes of ``after``, the average reward dropped by
    more than ``max_reward_drop``, or when, with ``min_episodes`` episodes of ``after`` and any of
    ``before``, the error rate rose by more than ``max_error_rate_increase`` (errors need no labels,
    so a broken model is caught before anyone labels its episodes); Pending while ``after`` has too
    few labeled episodes or ``before`` none to compare rewards with; Passed otherwise.
    """
    before, after = comparison.before, comparison.after
    reasons: list[str] = []
    delta = comparison.reward_delta
    if after.labeled >= min_episodes and delta is not None and -delta > max_reward_drop + SCORE_TOLERANCE:
        reasons.append(
            f"average reward fell {-delta:.3f} ({before.avg_reward:.3f} -> {after.avg_reward:.3f}), "
            f"more than the allowed {max_reward_drop:.3f}"
        )
    error_delta = comparison.error_rate_delta
    if (
        after.episodes >= min_episodes
        and error_delta is not None
        and error_delta > max_error_rate_increase + SCORE_TOLERANCE
    ):
        reasons.append(
            f"error rate rose {error_delta:.3f} ({before.error_rate:.3f} -> "
            f"{after.error_rate:.3f}), more than the allowed {max_error_rate_increase:.3f}"
        )
    if reasons:
        return Verdict(VerdictStatus.FAILED, "; ".join(reasons), tuple(reasons))
    if after.labeled < min_episodes:
        return Verdict(
            VerdictStatus.PENDING,
            f"{after.model_version} has {after.labeled} labeled episodes of {min_episodes} needed",
        )
    if delta is None:
        return Verdict(
            VerdictStatus.PENDING, f"{before.model_version} has no labeled episodes to compare with"
        )
    return Verdict(
        VerdictStatus.PASSED,
        f"{after.model_version} holds up on {after.labeled} labeled episodes (reward {delta:+.3f}, "
        f"error rate {error_delta:+.3f})",
    )


# ------------------------------------------------------------------------------------------ promote


def _check_new_name(name: str | None, previous: str | None) -> None:
    if name is None or name != previous:
        return
    raise PromotionError(
        f"{name} is the model served now: another adapter promoted under that name would share its "
        "model version, and compare-versions could not tell their live episodes apart; promote it "
        f"under a new name (--model-name {_next_name(name)})"
    )


def _next_name(name: str) -> str:
    """``analytics-tuned-v2`` -> ``analytics-tuned-v3``; a name without a ``-vN`` suffix gets ``-v2``."""
    match = re.fullmatch(r"(.*-v)(\d+)", name)
    return f"{match[1]}{int(match[2]) + 1}" if match else f"{name}-v2"


def latest_promotion(
    store: store_base.EpisodeStore, *, agent_id: str | None = None, job_id: str | None = None
) -> dict[str, Any] | None:
    """The newest promotion record, optionally of one agent or one training job."""
    found = [dict(r.data) for r in store.list_records(RECORD_KIND)]
    if agent_id is not None:
        found = [p for p in found if p.get("agentId") == agent_id]
    if job_id is not None:
        found = [p for p in found if p.get("jobId") == job_id]
    found.sort(key=lambda p: str(p.get("promoted", "")))
    return found[-1] if found else None


def adapter_of_job(store: store_base.EpisodeStore, job_id: str) -> tuple[str, dict[str, Any]]:
    """The best round's adapter of a finished training job, and the job."""
    record = store.get_record(TRAINING_RECORD_KIND, job_id)
    if record is None:
        raise PromotionError(f"no training job {job_id!r} in the store")
    job = dict(record.data)
    adapter = job.get("fineTunedModel")
    if job.get("phase") != "Succeeded" or not adapter:
        raise PromotionError(
            f"training job {job_id} has no fine-tuned model to promote (phase {job.get('phase')}: "
            f"{job.get('message') or 'no message'})"
        )
    return str(adapter), job


def _admin_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def served_adapter(serve_url: str, *, token: str | None = None) -> dict[str, Any]:
    """What a running ``lightning-op serve`` serves now (``GET /admin/adapter``)."""
    import httpx

    url = serve_url.rstrip("/") + "/admin/adapter"
    try:
        response = httpx.get(url, headers=_admin_headers(token), timeout=10.0)
    except httpx.HTTPError as exc:
        raise PromotionError(f"cannot reach the model server at {serve_url}: {exc}") from exc
    if response.status_code != 200:
        raise PromotionError(
            f"model server {serve_url} answered {response.status_code}: {response.text[:200]}"
        )
    data = response.json()
    return dict(data) if isinstance(data, dict) else {}


def switch_served_adapter(
    serve_url: str, adapter: str, *, name: str | None = None, token: str | None = None
) -> dict[str, Any]:
    """Tell a running ``lightning-op serve`` to load ``adapter`` (``POST /admin/adapter``)."""
    import httpx

    url = serve_url.rstrip("/") + "/admin/adapter"
    body: dict[str, Any] = {"adapter": adapter}
    if name:
        body["name"] = name
    try:
        response = httpx.post(url, json=body, headers=_admin_headers(token), timeout=SERVER_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise PromotionError(f"cannot reach the model server at {serve_url}: {exc}") from exc
    if response.status_code != 200:
        try:
            reason = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            reason = response.text[:200]
        raise PromotionError(f"model server {serve_url} refused the adapter {adapter}: {reason}")
    data = response.json()
    return dict(data) if isinstance(data, dict) else {}


def promote(
    store: store_base.EpisodeStore,
    *,
    adapter: str,
    agent_id: str | None = None,
    job_id: str | None = None,
    model_name: str | None = None,
    previous_model: str | None = None,
    serve_url: str | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """Switch the served model to ``adapter`` (when ``serve_url``) and record the promotion.

    ``previous_model`` defaults to what the server served before (its tuned name, else its base
    name), else the agent's last promoted model. Returns the promotion record. Raises
    ``PromotionError``, before anything changes, when the promoted model would have the previous
    model's name: live episodes of both would be one model version, which no comparison can split.
    """
    before = served_adapter(serve_url, token=token) if serve_url else {}
    if previous_model is None and before:
        previous_model = before.get("tunedName") if before.get("adapter") else before.get("baseName")
    if previous_model is None and agent_id is not None:
        last = latest_promotion(store, agent_id=agent_id)
        previous_model = last.get("promotedModel") if last else None
    _check_new_name(model_name or before.get("tunedName") or adapter, previous_model)
    server: dict[str, Any] | None = None
    if serve_url:
        server = switch_served_adapter(serve_url, adapter, name=model_name, token=token)
        model_name = model_name or server.get("tunedName")
    now = datetime.now(UTC)
    promotion_id = f"promo-{now.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    data: dict[str, Any] = {
        "id": promotion_id,
        "agentId": agent_id,
        "jobId": job_id,
        "adapter": adapter,
        "previousModel": previous_model,
        "promotedModel": model_name or adapter,
        "serveUrl": serve_url,
        "server": server,
        "promoted": now.isoformat(),
    }
    store.put_record(RECORD_KIND, promotion_id, data, expected_revision=0)
    return data
