"""Episode ingest: the collector service and the client library agents record episodes with.

``server`` is the HTTP service behind ``lightning-op collector``: ``POST /v1/episodes`` validates
batches against ``api.episode`` and commits them to an ``EpisodeStore`` through one writer with group
commit; ``/healthz``, ``/readyz`` and ``/metrics`` serve probes and Prometheus. ``capture`` is the
agent side: ``EpisodeRecorder`` records interactions in microseconds and posts them to the collector
from a background thread, never blocking or crashing the agent.

Importing this package is cheap: agents import ``lightning_op.collector.capture`` (httpx only), and
aiohttp is loaded only by ``server``.
"""
