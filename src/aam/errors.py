"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""


class AAMError(Exception):
    """A problem with the user's input or options. The message says what is wrong and how to fix it."""


class InputError(AAMError, ValueError):
    """Bad input data: names the file, the sample or feature ID, or the column."""


class BackendUnavailable(AAMError, RuntimeError):
    """An explicitly requested kernel backend cannot run here; the message says why."""


class Interrupted(Exception):
    """Training stopped by a signal after saving last.pt. The CLI exits 0 after a preemption signal (SIGTERM,
    SIGUSR1: the job can be requeued) and 128 + the signal number otherwise (Ctrl-C: 130)."""

    def __init__(self, message: str, signum: int, preempted: bool = False):
        super().__init__(message)
        self.signum = signum
        self.preempted = preempted

    @property
    def exit_code(self) -> int:
        return 0 if self.preempted else 128 + self.signum
