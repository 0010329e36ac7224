"""The wild suite (placeholder while it is written)."""
