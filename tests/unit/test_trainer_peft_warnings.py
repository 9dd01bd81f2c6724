"""Loading an adapter does not print transformers' FutureWarning about ``is_gradient_checkpointing``:
peft reads that deprecated property on every load, so every trainer run's stderr and the model
server's log carried it, with nothing for a user to do about it. Other warnings still show.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

from lightning_op.training import config as cfg
from lightning_op.training import local, tiny


def _warnings_while(action: Callable[[], object]) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        action()
    return [f"{w.category.__name__}: {w.message}" for w in caught]


def test_wrapping_and_reloading_an_adapter_shows_no_peft_deprecation(tmp_path: Path) -> None:
    tiny.build_tiny_model(tmp_path / "tiny", hidden_size=32, layers=1)
    (tmp_path / "train.jsonl").write_text("")
    config = cfg.parse_config(
        {"baseModel": "tiny", "trainFile": "train.jsonl", "outputDir": "out", "device": "cpu"},
        base_dir=tmp_path,
    )
    loaded: list[local.LoadedModel] = []
    fresh = _warnings_while(
        lambda: loaded.append(local.load_for_training(config, local.resolve_device("cpu")))
    )
    assert not [w for w in fresh if "is_gradient_checkpointing" in w], fresh

    loaded[0].model.save_pretrained(tmp_path / "adapter")
    again = config.model_copy(update={"init_adapter": tmp_path / "adapter"})
    reloaded = _warnings_while(lambda: local.load_for_training(again, local.resolve_device("cpu")))
    assert not [w for w in reloaded if "is_gradient_checkpointing" in w], reloaded


def test_other_warnings_still_show_inside_the_filter() -> None:
    def warn() -> None:
        with local.quiet_peft_deprecations():
            warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)

    assert _warnings_while(warn) == ["FutureWarning: something else is deprecated"]
