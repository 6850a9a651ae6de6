"""Expected failures shared by the trainer and the demo (no torch import here)."""


class UserError(Exception):
    """A problem with the user's input (config, data, model files, output folder) that a message
    can explain: front ends print it as one line, without a traceback."""
