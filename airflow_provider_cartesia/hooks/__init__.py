"""Hooks of the Cartesia provider."""
