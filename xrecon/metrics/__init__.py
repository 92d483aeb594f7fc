"""Metrics used by every method: registration errors and shape distances.
Definitions: docs/conventions.md (and ../shared/CONVENTIONS.md)."""
