"""promotion controller (being written)."""

from __future__ import annotations
