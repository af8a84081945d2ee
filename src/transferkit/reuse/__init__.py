"""Saving, loading and using adapted models."""
