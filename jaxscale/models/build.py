"""A run's model from its config: the registered class, and LoRA adapters where asked."""

from flax import nnx

from jaxscale.models import lora
from jaxscale.models.registry import MODELS


def build_model(model_config, seed: int):
  kwargs = {k: v for k, v in model_config.items() if k != 'name'}
  return MODELS.get(model_config.name)(**kwargs, rngs=nnx.Rngs(seed))


def model_for(config):
  """The run's model: `config.model`, with LoRA adapters where `config.lora.rank` asks."""
  model = build_model(config.model, config.seed)
  if config.get('lora', {}).get('rank'):
    lora.add_adapters(model, config.lora, nnx.Rngs(config.seed + 1))
  return model
