"""The project's error types: bad input that the CLI reports in one line, no traceback.

Every error names the file (or option, or model id) at fault and the problem, so
``lrsvqa`` prints ``error: <file>: <problem>`` and exits with status 2; anything else
is a bug and keeps its traceback. They are ``ValueError`` subclasses, so callers that
validate inputs generically still catch them.
"""

from __future__ import annotations

from os import PathLike


class LrsvqaError(ValueError):
    """Bad input the user can fix; the message is ``<where>: <problem>``.

    Attributes:
        path: The file, folder, option or model id at fault.
        problem: What is wrong with it, in words.
    """

    def __init__(self, path: str | PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class InputFileError(LrsvqaError):
    """A question, answers, labels or data file is unreadable or holds a bad item."""


class ModelLoadError(LrsvqaError):
    """A model or RFM cannot be found or loaded."""


class OptionError(LrsvqaError):
    """An option value is out of range or inconsistent; ``path`` names the option."""


class UnsafePathError(LrsvqaError):
    """A path read from a file points outside the folder it must stay in."""


class RunMismatchError(LrsvqaError):
    """An answers file was made by another run than the one asked to resume it."""
