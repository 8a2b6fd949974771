"""lrsvqa: let large vision-language models look only where the question points.

Implements "When Large Vision-Language Model Meets Large Remote Sensing Imagery:
Coarse-to-Fine Text-Guided Token Pruning" (ICCV 2025): the Dynamic Image Pyramid,
the Region Focus Module, attention distillation, coarse-to-fine inference and the
LRS-VQA benchmark tooling.
"""

__version__ = "0.1.0"
