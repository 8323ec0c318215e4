"""Registers every command module on the app."""
from . import app  # noqa: F401
from . import weights  # noqa: F401
from . import eval  # noqa: F401
from . import segment  # noqa: F401
from . import info  # noqa: F401
