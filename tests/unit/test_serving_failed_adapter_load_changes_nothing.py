"""An adapter load that fails part-way leaves the model server as it was (``serving.server.ModelServer``).

peft wraps the base model's layers in LoRA layers before it reads an adapter's weights, so a load that
fails on the weights used to leave those layers in the base model: base-model replies changed, and the
next load stacked onto them. A tiny random Llama (hidden 64) and LoRA adapters made with peft (random,
not trained: enough to change the model's replies) stand in for real ones; no model hub.

Covers, for an adapter trained for another base model (wrong shapes), one whose weights file was cut
short, one whose ``target_modules`` name a layer LoRA cannot wrap, and one with no weights file:
- the first load fails with a 400 ``ServingError`` naming the adapter's path and what was wrong;
  base-model greedy replies are what they were before, no LoRA layer is left in the model, and a good
  adapter loads afterwards and answers as it does on a fresh server;
- a swap to a bad adapter fails the same way and keeps the served adapter: same info, same replies,
  no half-loaded slot left in the model, and a later swap to an adapter of another rank and other
  target modules answers as it does on a fresh server;
- over HTTP, ``POST /admin/adapter`` with a truncated weights file is a 400 that names the adapter
  (it was a 500 without a message).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import test_utils

from lightning_op.serving import server as server_mod
from lightning_op.training import local, tiny

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "How are sales this week?"}]


@dataclass(frozen=True)
class Models:
    base: Path
    #: rank 4 on q_proj and v_proj
    good: Path
    #: rank 8 on every attention projection: another shape of adapter, for the load after a failure
    other: Path
    #: rank 4 on q_proj and v_proj of a base model with hidden size 32
    foreign: Path


def _make_base(path: Path) -> Path:
    """A tiny random Llama whose greedy replies depend on its weights.

    With transformers' initialisation (std 0.02) every token's logit is about the same and greedy
    decoding repeats one token whatever the weights; with std 0.3 a small change shows in the reply.
    """
    import torch
    from transformers import AutoModelForCausalLM

    tiny.build_tiny_model(path, hidden_size=64, layers=2, max_positions=256)
    model = AutoModelForCausalLM.from_pretrained(path)
    torch.manual_seed(0)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.normal_(0.0, 0.3)
    model.save_pretrained(path)
    return path


def _make_adapter(base: Path, out: Path, *, rank: int, targets: list[str], seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(seed)
    # init_lora_weights=False: random A and B, so the adapter changes replies as a trained one does
    # (peft's default B is zero: a no-op until trained)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=targets,
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    with local.quiet_peft_deprecations():
        get_peft_model(model, config).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    root = tmp_path_factory.mktemp("serving-models")
    base = _make_base(root / "analytics-base")
    other_base = tiny.build_tiny_model(root / "other-base", hidden_size=32, layers=2, max_positions=256)
    return Models(
        base=base,
        good=_make_adapter(base, root / "good", rank=4, targets=["q_proj", "v_proj"], seed=1),
        other=_make_adapter(
            base, root / "other", rank=8, targets=["q_proj", "k_proj", "v_proj", "o_proj"], seed=2
        ),
        foreign=_make_adapter(other_base, root / "foreign", rank=4, targets=["q_proj", "v_proj"], seed=3),
    )


def _server(models: Models) -> server_mod.ModelServer:
    return server_mod.ModelServer(models.base, base_name="analytics-base", device="cpu")


def _greedy(server: server_mod.ModelServer, *, use_adapter: bool) -> str:
    return server.generate(MESSAGES, use_adapter=use_adapter, temperature=0, max_tokens=24).text


@dataclass(frozen=True)
class Replies:
    base: str
    good: str
    other: str


@pytest.fixture(scope="module")
def replies(models: Models) -> Replies:
    """Greedy replies of servers that never saw a bad adapter."""
    server = _server(models)
    base = _greedy(server, use_adapter=False)
    server.load_adapter(models.good)
    good = _greedy(server, use_adapter=True)
    fresh = _server(models)
    fresh.load_adapter(models.other)
    other = _greedy(fresh, use_adapter=True)
    assert len({base, good, other}) == 3, "the adapters must change the replies for these tests to mean much"
    return Replies(base=base, good=good, other=other)


def _lora_slots(server: server_mod.ModelServer) -> list[tuple[str, list[str]]]:
    """Every peft tuner layer (LoRA's included) in the model, with the adapter slots it holds."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [
        (name, sorted(module.lora_A.keys()) if hasattr(module, "lora_A") else [])
        for name, module in server.model.named_modules()
        if isinstance(module, BaseTunerLayer)
    ]


# -- bad adapters: each a copy of a real one, spoilt the way it happens in practice ---------------------


def _trained_for_another_base(models: Models, dest: Path) -> Path:
    return Path(shutil.copytree(models.foreign, dest))


def _weights_cut_short(models: Models, dest: Path) -> Path:
    """A copy that stopped half-way (full disk, an interrupted ``kubectl cp``)."""
    shutil.copytree(models.good, dest)
    weights = dest / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    return dest


def _targets_a_norm_layer(models: Models, dest: Path) -> Path:
    """An adapter config from another architecture: a name that is a norm layer here, not a Linear."""
    shutil.copytree(models.good, dest)
    config_path = dest / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["target_modules"] = ["q_proj", "input_layernorm"]
    config_path.write_text(json.dumps(config))
    return dest


def _no_weights_file(models: Models, dest: Path) -> Path:
    """The config was copied, the weights were not."""
    shutil.copytree(models.good, dest)
    (dest / "adapter_model.safetensors").unlink()
    return dest


BAD_ADAPTERS: list[tuple[Callable[[Models, Path], Path], str]] = [
    (_trained_for_another_base, r"size mismatch"),
    (_weights_cut_short, r"(?i)safetensor"),
    (_targets_a_norm_layer, r"is not supported"),
    (_no_weights_file, r"no adapter_model\.safetensors"),
]
BAD_IDS = ["trained-for-another-base", "weights-cut-short", "targets-a-norm-layer", "no-weights-file"]


@pytest.fixture(params=BAD_ADAPTERS, ids=BAD_IDS)
def bad_adapter(request: pytest.FixtureRequest, models: Models, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    make, reason = request.param
    yield make(models, tmp_path / "bad-adapter"), reason


def _assert_refused(
    failure: pytest.ExceptionInfo[server_mod.ServingError], adapter: Path, reason: str
) -> None:
    error = failure.value
    assert (error.status, error.param) == (400, "adapter")
    assert str(adapter) in error.message
    assert re.search(reason, error.message), error.message


def test_a_failed_first_load_leaves_the_base_model_as_it_was(
    models: Models, replies: Replies, bad_adapter: tuple[Path, str]
) -> None:
    adapter, reason = bad_adapter
    server = _server(models)
    before = _greedy(server, use_adapter=False)

    with pytest.raises(server_mod.ServingError) as failure:
        server.load_adapter(adapter)

    _assert_refused(failure, adapter, reason)
    assert _greedy(server, use_adapter=False) == before == replies.base
    assert _lora_slots(server) == []
    assert not hasattr(server.model, "peft_config")
    assert server.models() == ["analytics-base"]
    assert (server.info()["adapter"], server.info()["adapterVersion"]) == (None, 0)

    server.load_adapter(models.good)
    assert _greedy(server, use_adapter=True) == replies.good
    assert _greedy(server, use_adapter=False) == replies.base


def test_a_failed_swap_keeps_the_served_adapter(
    models: Models, replies: Replies, bad_adapter: tuple[Path, str]
) -> None:
    adapter, reason = bad_adapter
    server = _server(models)
    server.load_adapter(models.good)
    served = server.info()

    with pytest.raises(server_mod.ServingError) as failure:
        server.load_adapter(adapter)

    _assert_refused(failure, adapter, reason)
    assert server.info() == served
    assert _greedy(server, use_adapter=True) == replies.good
    assert _greedy(server, use_adapter=False) == replies.base
    # nothing of the failed load is left: every LoRA layer holds the served slot only
    assert list(server.peft.peft_config) == ["adapter-1"]
    assert {slot for _, slots in _lora_slots(server) for slot in slots} == {"adapter-1"}

    server.load_adapter(models.other)
    assert _greedy(server, use_adapter=True) == replies.other
    assert _greedy(server, use_adapter=False) == replies.base


async def test_a_bad_adapter_over_http_is_a_400_naming_it(models: Models, tmp_path: Path) -> None:
    adapter = _weights_cut_short(models, tmp_path / "cut-short")
    app = server_mod.create_app(_server(models))
    async with test_utils.TestClient(test_utils.TestServer(app)) as client:
        response = await client.post("/admin/adapter", json={"adapter": str(adapter)})
        assert response.status == 400, await response.text()
        error = (await response.json())["error"]
        assert error["param"] == "adapter"
        assert str(adapter) in error["message"]
        served = await (await client.get("/admin/adapter")).json()
        assert served["adapter"] is None
