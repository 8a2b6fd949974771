"""A small client for OpenAI-compatible chat-completions servers, with images.

Wraps the ``openai`` client with what a long paid batch needs: the SDK's own retries
(``max_retries``: exponential backoff with jitter, honouring ``Retry-After``) on rate
limits, server errors, timeouts and connection errors, a per-item failure that
callers record instead of crashing on, and a token counter for cost. The API key is
held out of ``repr`` and never logged, and it is cut out of everything the server
sends back (error bodies, replies) before that is stored or printed: a server that
echoes the key cannot make it land in ``qa.jsonl``, ``answers.jsonl`` or the terminal.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import openai
from PIL import Image

from lrsvqa.errors import LrsvqaError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApiSettings:
    """Where and how to call the model.

    Attributes:
        base_url: Server root, e.g. ``https://api.openai.com/v1`` or a local vLLM.
        model: Model name the server knows.
        api_key: Secret; excluded from ``repr`` so it cannot leak into logs.
        timeout: Seconds to wait for one reply.
        max_retries: Retries after the first try on 408, 409, 429, 5xx, timeouts and
            connection errors, done by the ``openai`` client itself.
        max_tokens: Reply length cap.
        temperature: Sampling temperature; 0 makes reruns comparable.
    """

    base_url: str
    model: str
    api_key: str = field(repr=False)
    timeout: float = 120.0
    max_retries: int = 5
    max_tokens: int = 1024
    temperature: float = 0.0


class RequestFailed(RuntimeError):
    """One request gave no usable reply after all retries; the item is recorded as failed."""


class ApiConfigError(LrsvqaError):
    """The server refuses every request (bad key, no permission, unknown model)."""


REDACTED = "<redacted>"


def redact(text: str, secret: str) -> str:
    """``text`` with every occurrence of ``secret`` replaced.

    Placeholders (``EMPTY``, keys under 4 characters) are left: replacing them would
    mangle ordinary words rather than hide a secret.
    """
    return text.replace(secret, REDACTED) if len(secret) >= 4 and secret != "EMPTY" else text


@dataclass
class Usage:
    """Running totals of paid calls and tokens, shared by concurrent workers."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Count one answered call."""
        with self._lock:
            self.calls += 1
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens

    def as_dict(self) -> dict[str, int]:
        """Totals for reports."""
        with self._lock:
            return {
                "calls": self.calls,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
            }


@dataclass(frozen=True)
class Reply:
    """Text of an answered call and what it cost."""

    text: str
    prompt_tokens: int
    completion_tokens: int


def png_data_url(image: np.ndarray) -> str:
    """An RGB array as a ``data:image/png;base64`` URL, the chat API's inline image form.

    PNG rather than JPEG so the resolution sweep measures resolution, not compression.
    """
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def user_message(text: str, images: Sequence[np.ndarray] = ()) -> dict[str, Any]:
    """A user turn with images first, then the text, as vision chat models expect."""
    content: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": png_data_url(image)}} for image in images
    ]
    content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def _retryable(err: Exception) -> bool:
    if isinstance(err, openai.APIStatusError):
        return err.status_code == 429 or err.status_code >= 500
    return isinstance(err, openai.APIConnectionError)  # includes APITimeoutError


class ChatClient:
    """Chat completions with retries, failure isolation and a token counter.

    Authentication, permission and not-found errors are raised as they are: they
    would fail every item the same way, so the run stops instead of recording
    thousands of identical failures.
    """

    def __init__(self, settings: ApiSettings, usage: Usage | None = None) -> None:
        self.settings = settings
        self.usage = usage if usage is not None else Usage()
        self._client = openai.OpenAI(
            base_url=settings.base_url,
            api_key=settings.api_key,
            timeout=settings.timeout,
            max_retries=settings.max_retries,
        )

    def chat(self, messages: Sequence[dict[str, Any]]) -> Reply:
        """Send one conversation and return the reply text.

        Raises:
            RequestFailed: After ``max_retries`` retryable failures, or on another
                per-request error (e.g. 400 for an oversized image).
            ApiConfigError: Bad key, no permission or unknown model (key redacted).
        """
        settings = self.settings
        key = settings.api_key
        try:
            completion = self._client.chat.completions.create(
                model=settings.model,
                messages=list(messages),  # type: ignore[arg-type]
                max_tokens=settings.max_tokens,
                temperature=settings.temperature,
            )
        except (
            openai.AuthenticationError,
            openai.PermissionDeniedError,
            openai.NotFoundError,
        ) as err:
            # from None: the chained original would print the server's text unredacted.
            raise ApiConfigError(
                settings.base_url, f"{type(err).__name__}: {redact(str(err), key)}"
            ) from None
        except openai.OpenAIError as err:
            if _retryable(err):  # the client retried it max_retries times already
                raise RequestFailed(
                    f"gave up after {settings.max_retries + 1} tries: {type(err).__name__}"
                ) from None
            raise RequestFailed(
                f"request rejected: {type(err).__name__}: {redact(str(err), key)}"
            ) from None
        return self._reply(completion)

    def _reply(self, completion: Any) -> Reply:
        """Text and token counts of a completion, counted in :attr:`usage`.

        A reply without choices or content is returned as empty text: it was paid
        for, and the caller records it as a bad reply.
        """
        usage = completion.usage
        prompt = usage.prompt_tokens if usage else 0
        completion_tokens = usage.completion_tokens if usage else 0
        self.usage.add(prompt, completion_tokens)
        choices = completion.choices or []
        text = (choices[0].message.content if choices else None) or ""
        return Reply(redact(text, self.settings.api_key), prompt, completion_tokens)
