"""Test doubles shipped with the package, for the tests, the demo and the benchmarks.

``judge_server`` is a fake OpenAI-compatible chat-completions server that answers LLM-as-judge
requests with deterministic scores, a configurable latency and injectable faults (429, 500, hangs,
junk replies). Nothing in the library imports this package; it depends only on aiohttp.
"""
