"""LRS-VQA construction pipeline (paper section 4.2, Fig. 4/5): labels to checked QA pairs.

One module per stage, each reading the previous stage's JSONL and appending to its
own, so an interrupted or repeated run picks up where it stopped and never pays for
the same model call twice:

1. :mod:`~lrsvqa.bench.construct.targets`: uniquely nameable objects from labels.
2. :mod:`~lrsvqa.bench.construct.crops`: a context crop per target with a red box.
3. :mod:`~lrsvqa.bench.construct.qa`: question-answer pairs from a vision LLM.
4. :mod:`~lrsvqa.bench.construct.quality`: keep what gets easier with resolution.
5. :mod:`~lrsvqa.bench.construct.export`: the LRS-VQA JSONL and a summary.

:func:`~lrsvqa.bench.construct.pipeline.build_benchmark` runs any subset of them.
"""
