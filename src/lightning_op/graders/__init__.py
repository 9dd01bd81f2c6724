"""graders package."""
