"""The trainer process: ``python -m lightning_op.trainer``, the trainer image's entrypoint.

A thin command line over ``training.local`` (train one round) and ``training.evaluate`` (score an
adapter or the base model), working on dataset files alone, with no store: ``start-training`` runs
it as a subprocess on one machine and the FineTuneJob's Job runs it in the trainer image. See
``__main__`` for the commands, the JSON-lines protocol and the exit codes. Importing this package
does not import torch.
"""
