"""Errors a user can act on. The CLI prints their message as one line, no traceback."""


class ImrsegError(Exception):
    """Base class: the message names the file or argument and the problem."""


class CheckpointError(ImrsegError):
    """A weight file that cannot be read, is unsafe, or belongs to another model."""


class InputError(ImrsegError):
    """An image or argument that cannot be used."""
