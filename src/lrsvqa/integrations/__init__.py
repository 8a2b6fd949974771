"""Bridges to other evaluation tools (optional extras; nothing here is imported by the core)."""
