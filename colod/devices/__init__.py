"""Checkpoint device providers (zope.interface), one module per device kind."""
