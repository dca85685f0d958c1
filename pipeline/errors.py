"""The two kinds of failure a user can fix, told apart by exit status."""


class PipelineError(Exception):
    """A failure with a clear cause: printed as its lines, no traceback, exit 1."""

    exit_code = 1

    def __init__(self, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class ParamsError(PipelineError):
    """params.yaml is invalid: exit 2, before any output is touched."""

    exit_code = 2
