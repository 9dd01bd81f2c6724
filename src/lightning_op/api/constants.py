"""Group, version and the names of the four custom resources; the capture env var names.

Every other module takes these names from here so the CRDs, RBAC, controllers and the agent-side
capture client agree.
"""

from __future__ import annotations

GROUP = "lightning-op.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
FINALIZER = f"{GROUP}/finalizer"
FIELD_MANAGER = "lightning-op"
CATEGORY = "lightning"

# Agent-side environment variables set by EpisodeCapture and read by the capture client.
ENV_ENABLE_CAPTURE = "ENABLE_EPISODE_CAPTURE"
ENV_COLLECTOR_URL = "EPISODE_COLLECTOR_URL"
ENV_AGENT_ID = "EPISODE_AGENT_ID"
ENV_SAMPLING_RATE = "EPISODE_SAMPLING_RATE"
ENV_COLLECTOR_TOKEN = "EPISODE_COLLECTOR_TOKEN"
# EpisodeCapture's spec.redaction, applied by the capture client before an episode leaves the agent:
# builtins as a comma-separated list (empty: none), patterns as a JSON array of regex strings.
ENV_REDACT_BUILTINS = "EPISODE_REDACT_BUILTINS"
ENV_REDACT_PATTERNS = "EPISODE_REDACT_PATTERNS"
# Model selection env, set by ModelPromotion and read by the capture client for modelVersion.
ENV_USE_TUNED_MODEL = "USE_TUNED_MODEL"
ENV_TUNED_MODEL_NAME = "TUNED_MODEL_NAME"
ENV_MODEL_NAME = "MODEL_NAME"

# Where the CLI keeps its embedded store by default, and the env var that overrides it.
ENV_STORE = "LIGHTNING_STORE"
