"""Fine-tuning: the local LoRA trainer, the backends that run it, and the evaluation rounds.

- ``config``, ``data``, ``local``, ``evaluate``: one training round on one machine (torch, transformers,
  peft), the code the trainer image runs as ``python -m lightning_op.trainer``.
- ``backend``: the ``TrainingBackend`` protocol (submit a round, poll its status and progress,
  cancel it). ``LocalBackend`` runs each round as a trainer subprocess; ``AzureOpenAIBackend`` is the
  place for Azure OpenAI fine-tuning; the operator plugs its Job-based runner in behind the same protocol.
- ``rounds``: evaluation-driven fine-tuning over any backend: a baseline score, then rounds with a
  decaying learning rate until the score meets the threshold or the rounds run out, keeping the best.
  The decision is a pure function (``next_round_decision``) the operator reuses.
- ``tiny``: config-built tiny models and a byte-level tokenizer for the demo, tests and benchmarks.

Importing this package is cheap: torch and friends are imported inside the functions that need them.
"""
