"""A FineTuneJob's dataset snapshot on the model volume (``finetune_flow.build_snapshot``).

Covers: built once and reused (a restarted operator never rebuilds it from episodes that arrived
since, under a trainer that may be reading it); built again when ``spec.dataset`` changed since it
was built (a job that failed before any trainer ran, its spec then fixed), so the fixed spec is
what trains.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from lightning_op.api import episode as ep
from lightning_op.api import finetune as ft
from lightning_op.pipeline import finetune_flow as flow
from lightning_op.store import base as store_base

LAYOUT = flow.VolumeLayout("demo", "ftj", "0b6a4f7e-1c2d-4e5f-8a9b-0c1d2e3f4a5b")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def spec(**dataset: Any) -> ft.FineTuneJobSpec:
    return ft.FineTuneJobSpec.model_validate(
        {
            "agentId": "bot",
            "baseModel": "/models/base",
            "modelVolume": {"claimName": "models"},
            "dataset": {"minEpisodes": 2, **dataset},
        }
    )


def add(store: store_base.EpisodeStore, rewards: list[float], start: int = 0) -> None:
    store.insert_many(
        [
            ep.Episode(
                agent_id="bot",
                session_id=f"s-{start + i}",
                timestamp=T0 + timedelta(minutes=start + i),
                state=ep.State(query=f"where is order {start + i}?"),
                action=ep.Action(tool="lookup_order", arguments={"order": start + i}),
                reward=r,
                labeled=True,
            )
            for i, r in enumerate(rewards)
        ]
    )


def test_the_snapshot_is_built_once_and_again_only_for_another_spec(
    store: store_base.EpisodeStore, tmp_path: Path
) -> None:
    add(store, [0.75] * 4 + [0.95] * 3)
    first = flow.build_snapshot(store, spec(minReward=0.7), tmp_path, LAYOUT)
    assert first.stats is not None and first.episodes == 7

    add(store, [0.95] * 5, start=100)  # arrived since: not in the snapshot a trainer may be reading
    again = flow.build_snapshot(store, spec(minReward=0.7), tmp_path, LAYOUT)
    assert again.stats is not None and (again.episodes, again.stats.sha256) == (7, first.stats.sha256)

    fixed = flow.build_snapshot(store, spec(minReward=0.9), tmp_path, LAYOUT)
    assert fixed.stats is not None and fixed.episodes == 8
    assert fixed.stats.sha256 != first.stats.sha256
    assert flow.build_snapshot(store, spec(minReward=0.9), tmp_path, LAYOUT).episodes == 8


def test_a_finetunejob_with_the_longest_name_builds_its_snapshot(
    store: store_base.EpisodeStore, tmp_path: Path
) -> None:
    """Names (and agent ids, which default to them) run to 253 characters; a file name to 255 bytes.
    The job's directory and the build's temporary files stay under that."""
    name = "a" * 253
    layout = flow.VolumeLayout("demo", name, "0b6a4f7e-1c2d-4e5f-8a9b-0c1d2e3f4a5b")
    long_spec = ft.FineTuneJobSpec.model_validate(
        {"agentId": name, "baseModel": "/models/base", "modelVolume": {"claimName": "models"},
         "dataset": {"minEpisodes": 2}}
    )  # fmt: skip
    store.insert_many(
        [
            ep.Episode(
                agent_id=name,
                session_id=f"s-{i}",
                timestamp=T0 + timedelta(minutes=i),
                state=ep.State(query=f"where is order {i}?"),
                action=ep.Action(tool="lookup_order", arguments={"order": i}),
                reward=0.9,
                labeled=True,
            )
            for i in range(5)
        ]
    )
    outcome = flow.build_snapshot(store, long_spec, tmp_path, layout)
    assert outcome.stats is not None and outcome.episodes == 5
    assert all(len(part) <= 255 for part in layout.root.parts)
