"""An invalid EpisodeCapture spec ends in phase Failed, names the field, and is not retried.

Covers, with one operator and two objects: a spec the API server accepts but the operator cannot use
(a redaction pattern that is not a regular expression: no schema or CEL rule compiles regexes) and one
an older CRD would let through (``samplingRate`` above 1) both end in phase Failed with a ``Failed``
condition (reason InvalidSpec) whose message names the field, one Warning Event each, and no change to
their Deployments; over the next seconds the operator sends nothing (no retry storm: kopf's
PermanentError, and the timer skips an object that failed for its current generation). Fixing the
spec brings each to Active and turns its Failed condition False.
"""

from __future__ import annotations

import asyncio

from lightning_op.api import constants

# name: (spec fields, field named in the condition, whether the CRD accepts it, the fix)
CASES = {
    "bad-regex": (
        {"redaction": {"patterns": ["(unclosed"]}},
        "spec.redaction.patterns",
        True,
        {"redaction": {"patterns": []}},
    ),
    "rate-above-one": ({"samplingRate": 1.5}, "spec.samplingRate", False, {"samplingRate": 0.5}),
}


async def test_invalid_specs_fail_once_with_the_field_named(api, operator, objects):
    for name, (spec, _, crd_accepts, _) in CASES.items():
        await api.create(objects.agent_deployment(f"agent-{name}"))
        body = {
            "apiVersion": constants.API_VERSION,
            "kind": "EpisodeCapture",
            "metadata": {"name": name},
            "spec": {"targetRef": {"name": f"agent-{name}"}, **spec},
        }
        await api.create(body, validate=crd_accepts)

    for name, (_, field, _, _) in CASES.items():
        obj = await api.wait_for_phase("EpisodeCapture", name, "Failed")
        failed = {c["type"]: c for c in obj["status"]["conditions"]}["Failed"]
        assert (failed["status"], failed["reason"]) == ("True", "InvalidSpec"), name
        assert field in failed["message"], name
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]

    await asyncio.sleep(0.5)  # kopf's own end-of-handling bookkeeping lands
    mark = api.mark()
    await asyncio.sleep(1.5)  # three timer ticks, and kopf would have retried a temporary error once
    assert [str(w) for w in api.writes_since(mark)] == []
    assert [w.method for w in api.writes_since(0, "deployments")] == ["POST", "POST"]  # never patched
    for name, (_, field, _, _) in CASES.items():
        events = await api.events(name)
        assert [(e["type"], e["reason"]) for e in events] == [("Warning", "InvalidSpec")], name
        assert field in events[0]["message"]

    for name, (_, _, _, fix) in CASES.items():
        await api.patch("EpisodeCapture", name, {"spec": fix})
    for name in CASES:
        obj = await api.wait_for_phase("EpisodeCapture", name, "Active")
        conditions = {c["type"]: c for c in obj["status"]["conditions"]}
        assert conditions["Failed"]["status"] == "False"
        assert conditions["Ready"]["status"] == "True"
