"""Registers every command module on the app."""
from . import app  # noqa: F401
