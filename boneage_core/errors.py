"""The two exceptions the library raises on purpose: user mistakes and diverged training."""


class BoneAgeError(Exception):
    """A user mistake (bad file, bad column, impossible parameter). The CLI prints it as one line, exit 2."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run is stopped and recorded as failed, never as a score."""
