"""Test-wide settings: tests never touch the network.

``HF_HUB_OFFLINE=1`` is set before anything imports ``huggingface_hub`` (which reads
it once), so a model name that is not a local folder fails fast instead of trying the
hub; the tests build their tiny models offline (``tests/tiny_models.py``).
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
