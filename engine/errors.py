"""Engine errors: each carries one sentence a user can act on (the CLI and server show it, no traceback)."""

from __future__ import annotations


class DeltaserveError(Exception):
    """Base of every error that is the user's to fix (bad model path, bad input)."""


class ModelLoadError(DeltaserveError):
    """The model could not be found, downloaded or loaded."""


class InvalidInputError(DeltaserveError):
    """A prompt or parameter the engine cannot run (empty prompt, token id outside the vocabulary, ...)."""


class Cancelled(Exception):
    """Raised between prefill steps or decode steps when the request's client has gone away."""
