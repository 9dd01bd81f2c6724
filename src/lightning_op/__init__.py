"""lightning-op: make AI agents improve from their own traffic.

The package is layered (see ``.importlinter``): ``controllers`` -> (``pipeline``, ``manifests``,
``k8s``) -> (``store``, ``graders``, ``datasets``, ``training``) -> ``api``. The CLI and the
operator are two front ends over the same ``pipeline`` functions.
"""

__version__ = "0.1.0"
