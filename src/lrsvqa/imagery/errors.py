"""Errors raised when an image cannot be opened or decoded."""

from __future__ import annotations

from os import PathLike


class ImageReadError(ValueError):
    """An image file cannot be used; the message names the file and the problem.

    A ``ValueError`` so callers that validate inputs generically still catch it, while
    the eval runner can report the offending file without a traceback.

    Attributes:
        path: The file that failed.
        problem: What is wrong with it, in words.
    """

    def __init__(self, path: str | PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
