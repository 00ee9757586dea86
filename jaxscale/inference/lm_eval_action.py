"""Downstream lm-eval tasks during training: a periodic action (`train.actions`) that scores the
current parameters in-process every `config.lm_eval.every_steps` and at the end, writing
'eval/<task>/<metric>' rows to metrics.jsonl and TensorBoard. `python -m jaxscale.main` installs
it when `config.lm_eval.tasks` is set, so the trainer itself never imports lm-eval.
"""

import time

from absl import logging
from flax import nnx

from jaxscale.config.validation import ConfigError
from jaxscale.inference import lm_eval_model


class LmEval:

  def __init__(self, experiment, writer):
    self.experiment, self.writer = experiment, writer
    options = experiment.config.lm_eval
    self.tasks = list(options.tasks)
    self.every_steps, self.limit = options.every_steps, options.limit or None
    self.include_path = options.include_path or None
    self.batch_size = options.batch_size

  def due(self, progress) -> bool:
    return progress.is_last or bool(self.every_steps and progress.step % self.every_steps == 0)

  def __call__(self, progress):
    e, state = self.experiment, progress.state
    model = nnx.merge(e.graphdef, state.params, state.model_state, copy=True)
    lm = lm_eval_model.JaxscaleLM(model=model, config=e.config, batch_size=self.batch_size)
    start = time.perf_counter()
    # No bootstrap standard errors: they cost more than the scores at this size.
    results = lm_eval_model.evaluate(lm, self.tasks, include_path=self.include_path,
                                     limit=self.limit, bootstrap_iters=0)
    rows = lm_eval_model.metric_rows(results)
    self.writer.write_scalars(progress.step, rows)
    logging.info('step %d  lm-eval (%.0f s): %s', progress.step, time.perf_counter() - start,
                 ', '.join(f'{k} {v:.4f}' for k, v in rows.items()))


def make(experiment, writer, record) -> LmEval:
  """The action for `loop.run(extra_actions=...)`; checks the tasks and the run before training."""
  del record
  config = experiment.config
  for key, zero_means in (('every_steps', 'at the end only'), ('limit', 'every example')):
    if config.lm_eval[key] < 0:
      raise ConfigError(f'lm_eval.{key} must be >= 0 (0: {zero_means}); got '
                        f'{config.lm_eval[key]}.')
  if config.lm_eval.batch_size < 1:
    raise ConfigError(f'lm_eval.batch_size must be >= 1; got {config.lm_eval.batch_size}.')
  if config.dataset.get('tokenizer', 'byte') != 'byte' or config.model.vocab_size < 256:
    raise ConfigError('lm_eval.tasks needs a language model with the byte tokenizer (vocabulary '
                      f'>= 256); this run has vocabulary {config.model.vocab_size}.')
  try:
    lm_eval_model.check_tasks(lm_eval_model.task_manager(config.lm_eval.include_path or None),
                              list(config.lm_eval.tasks))
  except ValueError as e:
    raise ConfigError(f'lm_eval.tasks: {e}') from None
  return LmEval(experiment, writer)
