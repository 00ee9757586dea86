"""Model registry: `config.model.name` -> an NNX module class built as `cls(**config.model, rngs=...)`.

Each registered class takes its size knobs as keyword arguments, so config validation can check
`config.model` keys against the constructor's signature (`registry.py`).
"""

from jaxscale.models.registry import MODELS
# Importing the modules registers their models.
from jaxscale.models import mlp, resnet, transformer, vit  # noqa: E402,F401
