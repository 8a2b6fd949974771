"""The ``lrsvqa`` lmms-eval model: any registered strategy answering lmms-eval requests.

``--model_args`` (lmms-eval's ``key=value,...``): ``pretrained`` (the checkpoint,
``--model`` of ``lrsvqa eval``), ``strategy`` (default ``c2f``), ``rfm`` (the RFM,
``--rfm``) and any option of the strategy or of the model (``lrsvqa strategies`` lists
them), e.g. ``alpha=0.25``, ``device=cuda``, ``dtype=bfloat16``, ``layers=[7,14,21]``
(lists in brackets, as lmms-eval splits the arguments at commas). lmms-eval's
``--device`` is used when the arguments name no device.

Each request's visual is the image file its doc names (:func:`..task.doc_to_visual`):
the strategy reads the large image itself, as ``lrsvqa eval`` does, and consecutive
questions on one image share one prepared image. Requests are answered one by one
in one process; the answer budget is the strategy's ``max_new_tokens``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmms_eval.api.model import lmms
from lmms_eval.api.registry import register_model

from lrsvqa.integrations.lmms_eval import MODEL_NAME
from lrsvqa.strategies.registry import build_strategy

#: ``--model_args`` keys that name a strategy option under another name.
ALIASES = {"pretrained": "model_path", "rfm": "rfm_path"}
#: Settings lmms-eval passes to every model that do not apply here.
IGNORED = ("batch_size", "max_batch_size")


def _as_option(value: Any) -> Any:
    """lmms-eval's parsed value back as the text of a command-line option."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


@register_model(MODEL_NAME)
class LrsvqaLMM(lmms):
    """A strategy of :mod:`lrsvqa.strategies` behind lmms-eval's model interface."""

    def __init__(self, strategy: str = "c2f", device: str | None = None, **args: Any) -> None:
        super().__init__()
        for key in IGNORED:
            args.pop(key, None)
        options = {ALIASES.get(key, key): _as_option(value) for key, value in args.items()}
        if device is not None:
            options.setdefault("device", _as_option(device))
        self.strategy_name = strategy
        self.options = options
        self.strategy = build_strategy(strategy, **options)
        self._prepared: tuple[str, Any] | None = None

    def _prepare(self, image: str) -> Any:
        """The prepared image, reused while the requests stay on one image."""
        if self._prepared is None or self._prepared[0] != image:
            self._prepared = (image, self.strategy.prepare(Path(image)))
        return self._prepared[1]

    def generate_until(self, requests: list[Any]) -> list[str]:
        """Answer each request's text about the image of its doc."""
        answers = []
        for request in requests:
            context, _gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            visuals = doc_to_visual(self.task_dict[task][split][doc_id])
            if len(visuals) != 1 or not isinstance(visuals[0], str):
                raise ValueError(
                    f"{task}: doc {doc_id}: the lrsvqa model takes one image file path per "
                    "question (an lrsvqa task's doc_to_visual), not decoded images"
                )
            result = self.strategy.answer(self._prepare(visuals[0]), context)
            answers.append(result.answer)
        return answers

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        """Not supported: strategies generate answers."""
        raise NotImplementedError("the lrsvqa model only generates (output_type generate_until)")

    def generate_until_multi_round(self, requests: list[Any]) -> list[str]:
        """Not supported: one question per image at a time."""
        raise NotImplementedError("the lrsvqa model answers single-round questions only")
