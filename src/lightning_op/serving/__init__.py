"""Serving a base model plus a LoRA adapter behind an OpenAI-compatible API.

``server`` is what ``lightning-op serve`` runs: ``/v1/chat/completions`` and ``/v1/models`` for the
openai SDK (a request naming the base model is answered without the adapter, one naming the tuned
model with it), and ``/admin/adapter`` to load or swap the adapter without a restart, which is how
``promote-model`` puts a fine-tuned model in front of the agent. It builds on ``training`` (model
loading, ``evaluate.parse_assistant_output`` for tool calls); importing this package is cheap.
"""
