"""The four custom resources in one table: kind, plural, short name, spec and status models, phases.

``manifests.crds`` generates the CRDs and RBAC from ``KINDS``; controllers take plural names from it
and parse bodies with ``parse_spec(kind, body)``, which raises ``common.SpecError`` naming the field
(``spec.dataset.minReward: must be <= 1``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, overload

from lightning_op.api import capture, constants, finetune, labeling, promotion
from lightning_op.api.common import ApiModel, SpecError
from lightning_op.api.conditions import StatusBase

KindName = Literal["EpisodeCapture", "RewardLabeling", "FineTuneJob", "ModelPromotion"]


@dataclass(frozen=True)
class KindInfo:
    """Names and models of one custom resource."""

    kind: str
    plural: str
    short_name: str
    spec_model: type[ApiModel]
    status_model: type[StatusBase]
    phases: type[enum.StrEnum]
    description: str
    parse_spec: Callable[[Mapping[str, Any]], ApiModel]
    parse_status: Callable[[Mapping[str, Any]], StatusBase]

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{constants.GROUP}"

    @property
    def resource(self) -> str:
        """``group/version/plural``, as kopf and kmock name resources."""
        return f"{constants.GROUP}/{constants.VERSION}/{self.plural}"


KINDS: tuple[KindInfo, ...] = (
    KindInfo(
        kind=capture.KIND,
        plural="episodecaptures",
        short_name="ec",
        spec_model=capture.EpisodeCaptureSpec,
        status_model=capture.EpisodeCaptureStatus,
        phases=capture.CapturePhase,
        description="EpisodeCapture turns episode capture on for an agent workload and keeps count.",
        parse_spec=capture.parse_spec,
        parse_status=capture.parse_status,
    ),
    KindInfo(
        kind=labeling.KIND,
        plural="rewardlabelings",
        short_name="rl",
        spec_model=labeling.RewardLabelingSpec,
        status_model=labeling.RewardLabelingStatus,
        phases=labeling.LabelingPhase,
        description=(
            "RewardLabeling scores an agent's episodes with a grader and reports whether the data gives "
            "a learning signal (verdict GO, WARNING or NO-GO)."
        ),
        parse_spec=labeling.parse_spec,
        parse_status=labeling.parse_status,
    ),
    KindInfo(
        kind=finetune.KIND,
        plural="finetunejobs",
        short_name="ftj",
        spec_model=finetune.FineTuneJobSpec,
        status_model=finetune.FineTuneJobStatus,
        phases=finetune.FineTunePhase,
        description=(
            "FineTuneJob builds a dataset from labeled episodes and trains on it, round after round, "
            "until the evaluation passes."
        ),
        parse_spec=finetune.parse_spec,
        parse_status=finetune.parse_status,
    ),
    KindInfo(
        kind=promotion.KIND,
        plural="modelpromotions",
        short_name="mp",
        spec_model=promotion.ModelPromotionSpec,
        status_model=promotion.ModelPromotionStatus,
        phases=promotion.PromotionPhase,
        description=(
            "ModelPromotion puts a fine-tuned model in front of users, checks it on live traffic, and "
            "rolls back if it got worse."
        ),
        parse_spec=promotion.parse_spec,
        parse_status=promotion.parse_status,
    ),
)

_BY_NAME: dict[str, KindInfo] = {}
for _info in KINDS:
    for _key in (_info.kind, _info.plural, _info.singular, _info.short_name):
        _BY_NAME[_key.lower()] = _info


def kind_info(kind: str) -> KindInfo:
    """Look a kind up by kind, plural, singular or short name (case-insensitive)."""
    try:
        return _BY_NAME[kind.lower()]
    except KeyError:
        known = ", ".join(info.kind for info in KINDS)
        raise ValueError(f"unknown kind {kind!r}: expected one of {known}") from None


@overload
def parse_spec(kind: Literal["EpisodeCapture"], body: Mapping[str, Any]) -> capture.EpisodeCaptureSpec: ...
@overload
def parse_spec(kind: Literal["RewardLabeling"], body: Mapping[str, Any]) -> labeling.RewardLabelingSpec: ...
@overload
def parse_spec(kind: Literal["FineTuneJob"], body: Mapping[str, Any]) -> finetune.FineTuneJobSpec: ...
@overload
def parse_spec(kind: Literal["ModelPromotion"], body: Mapping[str, Any]) -> promotion.ModelPromotionSpec: ...
@overload
def parse_spec(kind: str, body: Mapping[str, Any]) -> ApiModel: ...
def parse_spec(kind: str, body: Mapping[str, Any]) -> ApiModel:
    """Validate an object body's ``spec`` (``agentId`` defaults to ``metadata.name``).

    Raises ``SpecError`` whose message names each bad field, e.g. ``spec.dataset.minReward: must be <= 1``.
    """
    return kind_info(kind).parse_spec(body)


def parse_status(kind: str, body: Mapping[str, Any]) -> StatusBase:
    """Validate an object body's ``status`` (an empty status when there is none)."""
    return kind_info(kind).parse_status(body)


__all__ = ["KINDS", "KindInfo", "KindName", "SpecError", "kind_info", "parse_spec", "parse_status"]
