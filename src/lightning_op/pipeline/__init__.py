"""The loop's steps as plain functions over a store and backends, shared by the CLI and the controllers.

One module per step (``labeling``: sample test, label a batch, dry run; ``training``; ``promotion``).
A step takes an open ``store.base.EpisodeStore`` and the objects it needs (a grader, a trainer
backend), returns a report object, and never prints: the CLI renders the report, a controller copies
it into the custom resource's status. Nothing here imports kopf or the kubernetes client.
"""
