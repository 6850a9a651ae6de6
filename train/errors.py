"""Expected failures: a mistake in what the user gave us (config, data, model files, output folder).

The CLI prints such an error as one line and exits with code 2; anything else is a bug and keeps its
traceback. Raise a subclass with a message that says what is wrong and what to do."""


class UserError(Exception):
    """A problem with the user's input that a message can explain; no traceback needed."""


class TrainingDiverged(UserError):
    """The loss became NaN or Inf; nothing past the last good checkpoint was saved."""
