"""The one error type model_core raises for bad input from outside.

Callers (the CLI, the catalog pipeline) turn it into one clear line that names the file or
field; anything else that escapes is a bug, not bad input.
"""


class InputError(ValueError):
    """Bad input from outside the program: an unreadable image, a malformed keypoint file,
    a model directory with a missing part, a pairs CSV without a required column."""
