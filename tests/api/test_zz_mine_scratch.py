import asyncio, time
import pytest
from support.trainer_double import TrainerDouble, finetune_manifest, seed_episodes

@pytest.mark.parametrize("how", ["kill", "stop", "none"])
async def test_teardown(api, operator_process, how, store_url, tmp_path, kubelet):
    seed_episodes(store_url, "bot", 12)
    env = {"LIGHTNING_MODELS_DIR": str(tmp_path)}
    await operator_process.start(**env)
    await api.create(finetune_manifest("ftj"))
    await api.wait_for_phase("FineTuneJob", "ftj", "Evaluating")
    if how == "kill":
        await operator_process.kill()
    elif how == "stop":
        await operator_process.stop()
    t = TrainerDouble(api, kubelet, tmp_path)
    await t.progress("ftj", 0, 10)
    await asyncio.sleep(1)
