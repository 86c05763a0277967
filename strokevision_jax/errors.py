"""The errors of a training run: each message says why it stopped and what to do."""


class TrainingError(RuntimeError):
    """A run that cannot go on; the message says why and what to do."""


class UsageError(TrainingError):
    """A bad command-line value (exit status 2, like argparse)."""


class WorkdirInUse(TrainingError):
    """Another live process trains in this workdir."""
