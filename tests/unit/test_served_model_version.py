"""Which model version a container serves, read the same way by the capture client (from the
process env, to fill ``modelVersion``) and by a promotion (from the Deployment, for
``status.previousModel`` and the verification's "before" traffic): if they disagreed, the
verification would look for episodes under a version nobody recorded."""

from __future__ import annotations

from typing import Any

import pytest

from lightning_op.api import episode as ep
from lightning_op.api import promotion
from lightning_op.pipeline import promotion_flow

FROM_CONFIGMAP: dict[str, Any] = {"valueFrom": {"configMapKeyRef": {"name": "models", "key": "k"}}}


@pytest.mark.parametrize(
    ("env", "served"),
    [
        ({"MODEL_NAME": "base-7b"}, "base-7b"),
        ({"MODEL_NAME": "base-7b", "USE_TUNED_MODEL": "true", "TUNED_MODEL_NAME": "ft-1"}, "ft-1"),
        ({"MODEL_NAME": "base-7b", "USE_TUNED_MODEL": "1", "TUNED_MODEL_NAME": "ft-1"}, "ft-1"),
        ({"MODEL_NAME": "base-7b", "USE_TUNED_MODEL": " Yes ", "TUNED_MODEL_NAME": " ft-1 "}, "ft-1"),
        ({"MODEL_NAME": "base-7b", "USE_TUNED_MODEL": "false", "TUNED_MODEL_NAME": "ft-1"}, "base-7b"),
        ({"MODEL_NAME": "base-7b", "USE_TUNED_MODEL": "on", "TUNED_MODEL_NAME": ""}, "base-7b"),
        ({}, None),
    ],
)
def test_the_capture_client_and_a_promotion_read_the_same_version(
    env: dict[str, str], served: str | None
) -> None:
    assert ep.model_version_from_env(env) == served
    container_env = [{"name": name, "value": value} for name, value in env.items()]
    assert promotion_flow.previous_model(container_env, promotion.EnvNames()) == served


@pytest.mark.parametrize(
    ("env", "served"),
    [
        # the version that applies comes from a ConfigMap: unknown, not MODEL_NAME
        (
            [
                {"name": "MODEL_NAME", "value": "b"},
                {"name": "USE_TUNED_MODEL", "value": "1"},
                {"name": "TUNED_MODEL_NAME", **FROM_CONFIGMAP},
            ],
            None,
        ),
        ([{"name": "MODEL_NAME", "value": "b"}, {"name": "USE_TUNED_MODEL", **FROM_CONFIGMAP}], None),
        ([{"name": "MODEL_NAME", **FROM_CONFIGMAP}], None),
        # a ConfigMap that does not apply (the tuned model is off) leaves MODEL_NAME readable
        (
            [
                {"name": "MODEL_NAME", "value": "b"},
                {"name": "USE_TUNED_MODEL", "value": "false"},
                {"name": "TUNED_MODEL_NAME", **FROM_CONFIGMAP},
            ],
            "b",
        ),
        # a later entry of the same name wins, as in the pod
        ([{"name": "MODEL_NAME", "value": "old"}, {"name": "MODEL_NAME", "value": "new"}], "new"),
    ],
)
def test_a_promotion_reads_a_version_set_from_a_configmap_as_unknown(
    env: list[dict[str, Any]], served: str | None
) -> None:
    assert promotion_flow.previous_model(env, promotion.EnvNames()) == served


def test_a_promotion_reads_the_env_names_its_spec_gives() -> None:
    names = promotion.EnvNames(use_tuned_model="SERVE_FT", model_name="FT_NAME")
    env = [
        {"name": "MODEL_NAME", "value": "b"},
        {"name": "SERVE_FT", "value": "yes"},
        {"name": "FT_NAME", "value": "x"},
    ]
    assert promotion_flow.previous_model(env, names) == "x"
