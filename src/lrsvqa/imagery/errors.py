"""Errors raised when an image cannot be opened or decoded."""

from __future__ import annotations

from lrsvqa.errors import InputFileError


class ImageReadError(InputFileError):
    """An image file cannot be used; the message names the file and the problem.

    One of the project's input errors (:mod:`lrsvqa.errors`), so the CLI reports it in
    one line and the eval runner records the offending file without a traceback.
    """
