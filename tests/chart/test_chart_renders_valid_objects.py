"""The chart lints clean and renders objects a real API server accepts, with every value set.

Covers, for the defaults, every toggle on, every toggle off, the Cosmos and placement variants
(``conftest.VALUE_SETS``): Helm's lint finds no warning or error (strict, against the oldest
Kubernetes the chart supports); every rendered object validates against the Kubernetes OpenAPI
schemas (``kubernetes-validate``, strict: an unknown or misspelt field fails) for the oldest supported
and the newest known Kubernetes; ServiceMonitor, a CRD-typed object the schemas do not know, is
checked structurally; the chart's CRDs validate as CustomResourceDefinitions; object names are unique
and fit Kubernetes' limits; namespaced objects land in the release namespace; a release named other
than the chart prefixes every name; settings that cannot work fail the render with a message that
says what to change.
"""

from __future__ import annotations

import re
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from tests_chart_constants import CHART_DIR, NAMESPACE  # noqa: F401  (placeholder, replaced below)
