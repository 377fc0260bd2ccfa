"""Transfers of the Cartesia provider."""
