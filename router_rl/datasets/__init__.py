"""Bundled routing datasets; see ATTRIBUTION.md."""
