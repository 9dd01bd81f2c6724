"""An invalid EpisodeCapture spec ends in phase Failed, names the field, and is not retried.

Covers: a spec the API server accepts but the operator cannot use (a redaction pattern that is not a
regular expression: no schema or CEL rule compiles regexes) and one an older CRD would let through
(``samplingRate`` above 1) both end in phase Failed with a ``Failed`` condition (reason InvalidSpec)
whose message names the field, a Warning Event, and no change to the Deployment; over the next
seconds the operator sends nothing (no retry storm: kopf's PermanentError, and the timer skips an
object that failed for its current generation). Fixing the spec brings it to Active and turns the
Failed condition False.
"""

from __future__ import annotations

import asyncio

import pytest

from lightning_op.api import constants


@pytest.mark.parametrize(
    ("spec", "field", "crd_accepts"),
    [
        pytest.param({"redaction": {"patterns": ["(unclosed"]}}, "spec.redaction.patterns", True, id="bad-regex"),
        pytest.param({"samplingRate": 1.5}, "spec.samplingRate", False, id="sampling-rate-above-1"),
    ],
)
async def test_invalid_spec_fails_once_with_the_field_named(api, operator, objects, spec, field, crd_accepts):
    await api.create(objects.agent_deployment())
    body = {
        "apiVersion": constants.API_VERSION,
        "kind": "EpisodeCapture",
        "metadata": {"name": "bad-capture"},
        "spec": {"targetRef": {"name": "agent"}, **spec},
    }
    await api.create(body, validate=crd_accepts)
    obj = await api.wait_for_phase("EpisodeCapture", "bad-capture", "Failed")
    failed = {c["type"]: c for c in obj["status"]["conditions"]}["Failed"]
    assert (failed["status"], failed["reason"]) == ("True", "InvalidSpec")
    assert field in failed["message"]
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]

    await asyncio.sleep(0.5)  # kopf's own end-of-handling bookkeeping lands
    mark = api.mark()
    await asyncio.sleep(2.0)  # four timer ticks, and kopf would have retried a temporary error twice
    assert [str(w) for w in api.writes_since(mark)] == []
    assert api.emulator.writes["deployments"] == 1  # the create; never patched
    events = await api.events("bad-capture")
    assert [(e["type"], e["reason"]) for e in events] == [("Warning", "InvalidSpec")]
    assert field in events[0]["message"]

    fixed = {"redaction": {"patterns": []}} if "redaction" in spec else {"samplingRate": 0.5}
    await api.patch("EpisodeCapture", "bad-capture", {"spec": fixed})
    obj = await api.wait_for_phase("EpisodeCapture", "bad-capture", "Active")
    conditions = {c["type"]: c for c in obj["status"]["conditions"]}
    assert conditions["Failed"]["status"] == "False"
    assert conditions["Ready"]["status"] == "True"
