"""Live episodes split by model version, and the promotion verification verdict on them.

Covers ``pipeline.promotion``:
- ``compare_versions`` sums up labeled rewards and error rates per ``modelVersion`` from the store;
  a version without episodes reads as zero episodes, not an error, with no error rate (not 0);
- ``promote`` refuses a name equal to the model served now (two adapters, one model version);
- without ``--before/--after`` the versions come from the agent's latest promotion record, else the two
  most recently seen versions; with fewer than two versions the error says to name them;
- ``verification_comparison``: with no previous model known (the container's model name came from a
  ConfigMap), the version compared with is the one other than the promoted seen last;
- ``verification_verdict``: Pending below ``minEpisodes`` labeled, Failed on a reward drop or an
  error-rate rise beyond the limits (the message names the figures), Passed otherwise; an error-rate
  rise fails even before any episode of either version is labeled.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from lightning_op.api import episode as ep
from lightning_op.pipeline import promotion
from lightning_op.store import base as store_base

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def add(
    store: store_base.EpisodeStore, version: str, rewards: list[float], errors: int = 0, start: int = 0
) -> None:
    episodes = []
    for i in range(len(rewards)):
        episode = ep.Episode(
            agent_id="agent-a",
            session_id=f"{version}-{start + i}",
            turn=0,
            timestamp=T0 + timedelta(minutes=start + i),
            model_version=version,
            state=ep.State(query=f"q{i}"),
            action=ep.Action(tool="sales_report", arguments={}),
            error="tool failed" if i < errors else None,
        )
        episodes.append(episode)
    store.insert_many(episodes)
    for episode, reward in zip(episodes, rewards, strict=True):
        store.add_label(episode.id, ep.Label(score=reward, grader="tool_selection"))


def test_compare_versions_sums_up_rewards_and_errors_per_version(store: store_base.EpisodeStore) -> None:
    add(store, "base", [0.0, 1.0, 0.0, 1.0], errors=1)
    add(store, "tuned", [1.0, 1.0, 1.0, 0.0], start=100)
    comparison = promotion.compare_versions(store, "agent-a", "base", "tuned")
    assert comparison.before.episodes == 4 and comparison.before.labeled == 4
    assert comparison.before.avg_reward == pytest.approx(0.5)
    assert comparison.before.error_rate == pytest.approx(0.25)
    assert comparison.after.avg_reward == pytest.approx(0.75)
    assert comparison.reward_delta == pytest.approx(0.25)
    assert comparison.error_rate_delta == pytest.approx(-0.25)
    data = comparison.to_json_dict()
    assert data["before"]["avgReward"] == pytest.approx(0.5) and data["after"]["errorRate"] == 0.0


def test_a_version_without_episodes_reads_as_zero(store: store_base.EpisodeStore) -> None:
    add(store, "base", [1.0, 0.0])
    comparison = promotion.compare_versions(store, "agent-a", "base", "tuned-v2")
    assert comparison.after.episodes == 0 and comparison.after.avg_reward is None
    assert comparison.reward_delta is None
    assert comparison.after.error_rate is None, "no episodes is no error rate, not a perfect one"
    assert comparison.error_rate_delta is None
    data = comparison.to_json_dict()
    assert data["after"]["errorRate"] is None and data["errorRateDelta"] is None
    assert comparison.seen == ("base",)


def test_promoting_under_the_name_served_now_is_refused(store: store_base.EpisodeStore) -> None:
    """A second adapter under the served name would share its model version: refused before
    anything is recorded, with a new name to use."""
    promotion.promote(
        store, adapter="/adapters/a", agent_id="agent-a", model_name="tuned-v2", previous_model="v1"
    )
    with pytest.raises(
        promotion.PromotionError, match=r"tuned-v2 is the model served now.*--model-name tuned-v3"
    ):
        promotion.promote(store, adapter="/adapters/b", agent_id="agent-a", model_name="tuned-v2")
    assert len(store.list_records(promotion.RECORD_KIND)) == 1
    again = promotion.promote(store, adapter="/adapters/b", agent_id="agent-a", model_name="tuned-v3")
    assert (again["previousModel"], again["promotedModel"]) == ("tuned-v2", "tuned-v3")


def test_default_versions_come_from_the_latest_promotion(store: store_base.EpisodeStore) -> None:
    add(store, "v1", [1.0])
    add(store, "v2", [1.0], start=10)
    add(store, "v3", [0.0], start=20)
    promotion.promote(store, adapter="/adapters/v2", agent_id="agent-a", model_name="v2", previous_model="v1")
    comparison = promotion.compare_versions(store, "agent-a")
    assert (comparison.before.model_version, comparison.after.model_version) == ("v1", "v2")


def test_a_promotion_without_its_previous_model_compares_the_promoted_one(
    store: store_base.EpisodeStore,
) -> None:
    """``promote-model`` with no server to ask could not record the previous model: the promoted one
    is still compared, with the version seen last besides it (not the two newest versions)."""
    add(store, "v1", [1.0])
    add(store, "tuned", [0.0], start=10)
    add(store, "canary", [1.0], start=20)
    promotion.promote(store, adapter="/adapters/tuned", agent_id="agent-a", model_name="tuned")
    comparison = promotion.compare_versions(store, "agent-a")
    assert (comparison.before.model_version, comparison.after.model_version) == ("canary", "tuned")


def test_default_versions_without_a_promotion_are_the_two_latest_seen(store: store_base.EpisodeStore) -> None:
    add(store, "v1", [1.0])
    add(store, "v2", [1.0], start=10)
    add(store, "v3", [0.0], start=20)
    comparison = promotion.compare_versions(store, "agent-a")
    assert (comparison.before.model_version, comparison.after.model_version) == ("v2", "v3")


def test_one_version_and_no_promotion_asks_for_before_and_after(store: store_base.EpisodeStore) -> None:
    add(store, "v1", [1.0])
    with pytest.raises(ValueError, match="--before and --after"):
        promotion.compare_versions(store, "agent-a")


def stats(version: str, rewards: list[float], errors: int = 0) -> promotion.VersionStats:
    episodes = [
        {"modelVersion": version, "labeled": True, "reward": r, "error": "x" if i < errors else None}
        for i, r in enumerate(rewards)
    ]
    return promotion.summarise_versions(episodes)[version]


@pytest.mark.parametrize(
    ("after", "after_errors", "status", "phrase"),
    [
        pytest.param([1.0] * 5, 0, promotion.VerdictStatus.PENDING, "5 labeled episodes of 10", id="too-few"),
        pytest.param([1.0] * 7 + [0.0] * 3, 0, promotion.VerdictStatus.PASSED, "holds up", id="better"),
        pytest.param(
            [1.0] * 4 + [0.0] * 6,
            0,
            promotion.VerdictStatus.FAILED,
            "average reward fell 0.200",
            id="reward-drop",
        ),
        pytest.param(
            [1.0] * 6 + [0.0] * 4,
            3,
            promotion.VerdictStatus.FAILED,
            "error rate rose 0.300",
            id="more-errors",
        ),
    ],
)
def test_verification_verdict(
    after: list[float], after_errors: int, status: promotion.VerdictStatus, phrase: str
) -> None:
    comparison = promotion.Comparison(
        agent_id="agent-a",
        before=stats("base", [1.0] * 6 + [0.0] * 4),
        after=stats("tuned", after, after_errors),
    )
    verdict = promotion.verification_verdict(
        comparison, max_reward_drop=0.05, max_error_rate_increase=0.1, min_episodes=10
    )
    assert verdict.status is status
    assert phrase in verdict.message


def test_an_unknown_previous_model_is_the_version_seen_last_before_the_promoted_one(
    store: store_base.EpisodeStore,
) -> None:
    add(store, "v1", [1.0] * 3)
    add(store, "from-configmap", [1.0, 0.0], start=10)
    add(store, "tuned", [0.0, 0.0], start=20)
    comparison = promotion.verification_comparison(store, "agent-a", None, "tuned", T0)
    assert comparison.before.model_version == "from-configmap" and comparison.before.episodes == 2
    assert comparison.after.model_version == "tuned"
    named = promotion.verification_comparison(store, "agent-a", "v1", "tuned", T0)
    assert named.before.model_version == "v1"


def test_the_promoted_version_counts_only_from_the_promotion(store: store_base.EpisodeStore) -> None:
    """The same model promoted again after a rollback: its bad episodes of the first time are not
    this promotion's verdict; the previous model's episodes before the promotion still count."""
    add(store, "base", [0.8] * 5)
    add(store, "tuned", [0.0] * 5, start=10)  # the first promotion, rolled back
    add(store, "base", [0.8] * 5, start=20)
    add(store, "tuned", [0.9] * 3, start=30)  # promoted again at T0 + 30 min
    comparison = promotion.verification_comparison(
        store, "agent-a", "base", "tuned", T0, promoted_since=T0 + timedelta(minutes=30)
    )
    assert (comparison.after.episodes, comparison.after.avg_reward) == (3, 0.9)
    assert comparison.before.episodes == 10
    everything = promotion.verification_comparison(store, "agent-a", "base", "tuned", T0)
    assert everything.after.episodes == 8


def test_an_error_rate_rise_fails_before_any_episode_is_labeled() -> None:
    unlabeled = [{"modelVersion": "base", "error": None} for _ in range(10)]
    broken = [{"modelVersion": "tuned", "error": "tool failed" if i < 8 else None} for i in range(10)]
    versions = promotion.summarise_versions(unlabeled + broken)
    comparison = promotion.Comparison("agent-a", before=versions["base"], after=versions["tuned"])
    verdict = promotion.verification_verdict(
        comparison, max_reward_drop=0.05, max_error_rate_increase=0.1, min_episodes=10
    )
    assert verdict.status is promotion.VerdictStatus.FAILED
    assert "error rate rose 0.800" in verdict.message
    # too few episodes of the new version to judge: still pending, however many failed
    few = promotion.summarise_versions(unlabeled + broken[:5])
    early = promotion.Comparison("agent-a", before=few["base"], after=few["tuned"])
    assert promotion.verification_verdict(early, 0.05, 0.1, 10).status is promotion.VerdictStatus.PENDING
