"""The one exception type of ckptfmt: a one-line message naming the file, field or tensor."""


class CheckpointError(Exception):
    """Invalid checkpoint, config or tensor. ``str(err)`` is a single line fit for a CLI."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or [message]
