"""Reusable test support: real ASGI server processes (``servers``) and their pytest fixtures."""
