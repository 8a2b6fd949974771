r"""lmms-eval integration (``pip install -e '.[lmms]'``): the ``lrsvqa`` model, benchmark tasks.

The model registers through lmms-eval's public model registry, the ``lmms_eval.models``
entry point (:func:`manifests`), so ``lmms-eval --model lrsvqa`` finds it once lrsvqa is
installed. Its ``--model_args`` pick the checkpoint, the strategy and its options::

    lmms-eval --model lrsvqa \
        --model_args pretrained=./llava,strategy=c2f,rfm=./rfm,alpha=0.25 \
        --tasks lrs_vqa --include_path tasks/ --log_samples --output_path logs/

The tasks (LRS-VQA, MME-RealWorld-RS) read local files:
:func:`lrsvqa.integrations.lmms_eval.task.write_tasks`
(``python -m lrsvqa.integrations.lmms_eval.task``) writes a task folder for a question file.
"""

from __future__ import annotations

from typing import Any

MODEL_NAME = "lrsvqa"
MODEL_CLASS = "lrsvqa.integrations.lmms_eval.model.LrsvqaLMM"


def manifests() -> list[Any]:
    """The ``lmms_eval.models`` entry point: the manifest of the ``lrsvqa`` model."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_NAME, simple_class_path=MODEL_CLASS)]
