"""The embedded default: a small pixel-space digit teacher, its text encoder and a digit classifier."""
