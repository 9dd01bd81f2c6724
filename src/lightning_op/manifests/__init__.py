"""Pure functions that build Kubernetes objects as dicts: the CRDs and RBAC (``crds``), and the
children the controllers create (trainer Jobs, env patches), each with a deterministic name.

Nothing here talks to a cluster or imports kopf or the kubernetes client: builders take parsed specs
from ``lightning_op.api`` and return plain dicts, so they are tested without an API server and the
same objects can be rendered to YAML (``lightning-op crds``).
"""
