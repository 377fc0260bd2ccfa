"""Triggers of the Cartesia provider."""
