"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""


class AAMError(Exception):
    """A problem with the user's input or options. The message says what is wrong and how to fix it."""


class InputError(AAMError, ValueError):
    """Bad input data: names the file, the sample or feature ID, or the column."""


class BackendUnavailable(AAMError, RuntimeError):
    """An explicitly requested kernel backend cannot run here; the message says why."""


class Interrupted(Exception):
    """Training stopped by SIGINT or SIGTERM after saving last.pt; the CLI exits 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
