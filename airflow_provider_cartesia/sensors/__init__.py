"""Sensors of the Cartesia provider."""
