"""Utilities below every other layer: atomic file writes, logging, seeding, devices."""
