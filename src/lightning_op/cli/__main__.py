"""``python -m lightning_op.cli``: the same command line as the ``lightning-op`` script."""

from lightning_op.cli import main

if __name__ == "__main__":
    main()
