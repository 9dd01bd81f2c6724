"""Training datasets: chat-format JSONL built from labeled episodes, validated and fingerprinted.

``rows`` turns one episode (its stored JSON dict) into one chat row ``{"messages": [...]}`` in OpenAI's
fine-tuning format; ``build`` streams episodes into a training file and a validation file (a stable
hash split), removes duplicates, estimates tokens and returns the statistics with the sha256 of the
exact bytes written; ``validate`` checks a JSONL file line by line before training and re-checks a
file's fingerprint.

This package does no store I/O: callers (the CLI, ``pipeline``) read episodes with
``EpisodeStore.iter_json(EpisodeQuery(**options.query_filter()))`` and keep the statistics as the store
record ``("dataset", name)``. It sits beside ``store`` in the layers, so it must not import it.
"""
