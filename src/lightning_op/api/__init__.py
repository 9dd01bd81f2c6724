"""API types shared by every layer: the Episode model, CRD spec/status models, constants.

Nothing here imports kopf, kubernetes or any storage or ML library; the CRD YAML is generated
from these models.
"""
