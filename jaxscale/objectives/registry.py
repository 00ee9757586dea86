"""The objective registry (`config.objective`) and the check of its key."""

from jaxscale.config import validation
from jaxscale.core.registry import Registry

OBJECTIVES = Registry('objective')


def name_for(config, task: str) -> str:
  return config.get('objective') or task


def make(name: str, config=None):
  """The objective's `sums` function; `config` None uses the objective's defaults."""
  return OBJECTIVES.get(name)(config)


@validation.register_check
def check_objective(config):
  if config.objective:  # '' takes the dataset's task.
    validation.check_choice('config.objective', config.objective, OBJECTIVES.names())
