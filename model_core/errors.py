"""The error types model_core raises: bad input from outside, and a training run that diverged.

Callers (the CLI, the catalog pipeline) turn it into one clear line that names the file or
field; anything else that escapes is a bug, not bad input.
"""


class InputError(ValueError):
    """Bad input from outside the program: an unreadable image, a malformed keypoint file,
    a model directory with a missing part, a pairs CSV without a required column."""


class TrainingDiverged(RuntimeError):
    """A training run whose loss became NaN or infinite: it stops at that step, writes nothing
    more (the checkpoints already written stay as they were, no final model) and says so.

    Not bad input, not a bug in the program: the run's settings (a learning rate too high,
    a precision too low) let the weights blow up. The CLI prints it as one line, as it does an
    InputError, and exits non-zero."""

    def __init__(self, message: str, step: int, loss: float):
        super().__init__(message)
        self.step = step
        self.loss = loss
