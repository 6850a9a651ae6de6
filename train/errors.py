"""Expected failures: a mistake in what the user gave us (config, data, model files, output folder).

The CLI prints such an error as one line and exits with code 2; anything else is a bug and keeps its
traceback. Raise a subclass with a message that says what is wrong and what to do."""

from hypersd_models.errors import UserError  # shared with the demo and the model loaders

__all__ = ["UserError", "TrainingDiverged", "ResumeError"]


class TrainingDiverged(UserError):
    """The loss became NaN or Inf; nothing past the last good checkpoint was saved."""


class ResumeError(UserError):
    """A run cannot be resumed as asked (no intact checkpoint, another process count...)."""
