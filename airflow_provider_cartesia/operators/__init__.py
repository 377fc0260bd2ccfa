"""Operators of the Cartesia provider."""
