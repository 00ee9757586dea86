"""The `jaxscale` model type of lm-evaluation-harness: a run's checkpoint (or a model in memory,
during training) scored in-process, batched and jitted, rows bucketed by length.

  import lm_eval, jaxscale.inference.lm_eval_model  # registers 'jaxscale'
  lm_eval.simple_evaluate(model='jaxscale', model_args='workdir=workdirs/default',
                          tasks=['jaxscale_stdlib_next_line'],
                          task_manager=jaxscale.inference.lm_eval_model.task_manager())

`python -m jaxscale.evaluate` runs this and writes `lm_eval.json`. Requests are scored as
lm-eval's HF model does: a continuation's log-likelihood given its context (truncated on the left
to `max_length` + 1 tokens), rolling windows of `max_length` tokens for perplexity, greedy
generation up to the `until` strings. Through the server, lm-eval's `local-completions` with
`max_length` two higher (it keeps one token for generation and one more for rolling context)
sends the same rows, so both routes score alike.
"""

import json
import pathlib

import jax
# lm-eval's own models first: once 'jaxscale' is registered, lm-eval no longer loads them lazily.
import lm_eval.models  # noqa: F401
import numpy as np
from flax import nnx
from lm_eval import utils as lm_eval_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from jaxscale.checkpoint import restore
from jaxscale.data.tokenizers import BYTE_SEPARATOR
from jaxscale.inference import sampling, scoring
from jaxscale.models import lora

TASKS_DIR = pathlib.Path(__file__).parent / 'lm_eval_tasks'
MODEL_ARGS = ('workdir', 'step', 'batch_size', 'max_length', 'max_gen_toks')
DEFAULT_BATCH_SIZE = 16


@register_model('jaxscale')
class JaxscaleLM(TemplateLM):
  """model_args: workdir (required), step (default: the newest checkpoint), batch_size (rows per
  forward pass, default 16), max_length (tokens of context, default the run's seq_len),
  max_gen_toks (default 256)."""

  def __init__(self, workdir: str | None = None, step: int | None = None,
               batch_size: int | str | None = DEFAULT_BATCH_SIZE, max_length: int | None = None,
               max_gen_toks: int = 256, *, model=None, config=None, max_batch_size=None,
               device=None, **unknown):
    super().__init__()
    del max_batch_size, device  # lm-eval passes them to every model; one host runs this one.
    if unknown:
      raise ValueError(f'Unknown jaxscale model_args {", ".join(sorted(unknown))}; it takes '
                       f'{", ".join(MODEL_ARGS)} (e.g. model_args="workdir=workdirs/default").')
    if model is None:
      if not workdir:
        raise ValueError('The jaxscale model needs model_args="workdir=DIR" (a training run).')
      model, config = restore.restore_model(workdir, None if step is None else int(step))
    else:
      model = nnx.merge(*nnx.split(model))  # A copy: merging LoRA must not touch the caller's.
      if lora.has_adapters(model):
        lora.merge(model)
    if config.dataset.get('tokenizer', 'byte') != 'byte' or config.model.vocab_size < 256:
      raise ValueError('lm-eval tasks are text: the jaxscale model reads runs with the byte '
                       f'tokenizer (vocabulary >= 256); this run has tokenizer '
                       f'{config.dataset.get("tokenizer")!r} and vocabulary '
                       f'{config.model.vocab_size}.')
    model.eval()
    self.graphdef, self.state = nnx.split(model)
    self.config = config
    self.batch_size = _positive_int('batch_size', batch_size)
    self.max_length = _positive_int('max_length', max_length or config.dataset.seq_len)
    self.max_gen_toks = _positive_int('max_gen_toks', max_gen_toks)

  @classmethod
  def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
    try:
      args = lm_eval_utils.simple_parse_args_string(arg_string)
    except ValueError as e:
      raise ValueError(f'model_args {arg_string!r} is not KEY=VALUE,KEY=VALUE: {e}') from None
    extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
    return cls(**{**extra, **args})

  @property
  def eot_token_id(self) -> int:
    return BYTE_SEPARATOR  # Byte 0 ends (and so precedes) every training document.

  @property
  def tokenizer_name(self) -> str:
    return 'bytes'

  def tok_encode(self, string: str, **kwargs) -> list[int]:
    del kwargs
    return sampling.encode_bytes(string).tolist()

  def tok_decode(self, tokens) -> str:
    return sampling.decode_bytes(tokens, stop_at_separator=False)

  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
    del kwargs
    rows = [np.asarray((context + continuation)[-(self.max_length + 1):], np.int32)
            for _, context, continuation in requests]
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))  # Similar lengths batch.
    results = [None] * len(rows)
    for start in tqdm(range(0, len(order), self.batch_size), disable=disable_tqdm,
                      desc='loglikelihood batches'):
      chunk = order[start:start + self.batch_size]
      scores = scoring.score_rows(self.graphdef, self.state, [rows[i] for i in chunk])
      for i, score in zip(chunk, scores):
        cache_key, _, continuation = requests[i]
        length = len(rows[i])
        count = min(len(continuation), length - 1)  # A continuation longer than the window.
        # Summed in Python floats, as lm-eval sums what a server returns.
        logprob = sum(float(x) for x in score.token_logprobs[length - 1 - count:])
        greedy = bool(np.all(score.top_ids[length - 1 - count:length - 1, 0]
                             == rows[i][length - count:]))
        results[i] = (logprob, greedy)
        if cache_key is not None:
          self.cache_hook.add_partial('loglikelihood', cache_key, results[i])
    return results

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    windows, owners = [], []
    for index, (text,) in enumerate(request.args for request in requests):
      for window in lm_eval_utils.get_rolling_token_windows(
          token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
          max_seq_len=self.max_length, context_len=1):
        context, continuation = lm_eval_utils.make_disjoint_window(window)
        windows.append((None, context, continuation))
        owners.append(index)
    scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
    totals = [0.0] * len(requests)
    for owner, (logprob, _) in zip(owners, scores):
      totals[owner] += logprob
    for request, total in zip(requests, totals):
      self.cache_hook.add_partial('loglikelihood_rolling', request.args, total)
    return totals

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    """Greedy (or, with `temperature` > 0 in the task's kwargs, sampled) continuations, cut at
    the first of the task's `until` strings or the document separator."""
    work = []
    for index, request in enumerate(requests):
      context, gen_kwargs = request.args
      kwargs = dict(gen_kwargs)
      until = kwargs.pop('until', None) or []
      until = [until] if isinstance(until, str) else list(until)
      new_tokens = int(kwargs.pop('max_gen_toks', self.max_gen_toks))
      keep = max(self.max_length - new_tokens, 1)
      tokens = (self.tok_encode(context) or [self.prefix_token_id])[-keep:]
      work.append((index, tokens, until, new_tokens, float(kwargs.get('temperature', 0.0))))
    work.sort(key=lambda item: -len(item[1]))
    outputs = [None] * len(requests)
    for start in tqdm(range(0, len(work), self.batch_size), disable=disable_tqdm,
                      desc='generate batches'):
      chunk = work[start:start + self.batch_size]
      options = [dict(temperature=temperature, top_k=0, top_p=1.0,
                      key=jax.random.fold_in(jax.random.key(0), index))
                 for index, _, _, _, temperature in chunk]
      longest = max(item[3] for item in chunk)
      new_BxN = sampling.generate_rows(
          self.graphdef, self.state, [np.asarray(item[1], np.int32) for item in chunk], options,
          sampling.bucket(longest), stop_tokens=(BYTE_SEPARATOR,))
      for (index, _, until, new_tokens, _), row in zip(chunk, new_BxN):
        text = sampling.decode_bytes(row[:new_tokens])  # Ends at the separator.
        for stop in until:
          if stop and stop in text:
            text = text[:text.index(stop)]
        outputs[index] = text
        self.cache_hook.add_partial('generate_until', requests[index].args, text)
    return outputs


def _positive_int(name: str, value) -> int:
  if value in (None, 'auto') and name == 'batch_size':
    return DEFAULT_BATCH_SIZE
  try:
    number = int(value)
  except (TypeError, ValueError):
    number = 0
  if number < 1:
    raise ValueError(f'jaxscale model_args {name} must be a positive integer; got {value!r}.')
  return number


def task_manager(include_path=None):
  """lm-eval's TaskManager with the shipped offline tasks (`lm_eval_tasks/`) and, where given, a
  folder (or list of folders) of the user's own task YAMLs."""
  from lm_eval.tasks import TaskManager  # pylint: disable=import-outside-toplevel
  extra = [] if not include_path else (
      [include_path] if isinstance(include_path, (str, pathlib.Path)) else list(include_path))
  for folder in extra:
    if not pathlib.Path(folder).is_dir():
      raise ValueError(f'--include_path {folder} is not a folder of task YAMLs.')
  return TaskManager(include_path=[str(TASKS_DIR), *map(str, extra)])


def check_tasks(manager, tasks: list[str]) -> None:
  """A clear error naming tasks lm-eval does not know (rather than its own deep in the run)."""
  known = set(manager.all_tasks)
  unknown = [task for task in tasks if task not in known]
  if unknown:
    shipped = sorted(p.stem for p in TASKS_DIR.glob('*.yaml'))
    raise ValueError(f'Unknown lm-eval task(s) {", ".join(unknown)}. Offline tasks shipped: '
                     f'{", ".join(shipped)}; `python -m lm_eval ls tasks` lists the others, and '
                     '--include_path DIR adds your own YAMLs.')


def evaluate(lm, tasks: list[str], include_path=None, limit=None, **kwargs) -> dict:
  """lm-eval's results for `lm` (a JaxscaleLM, or any lm-eval model or model name) on `tasks`."""
  import lm_eval  # pylint: disable=import-outside-toplevel
  manager = task_manager(include_path)
  check_tasks(manager, tasks)
  results = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit,
                                    **kwargs)
  return json.loads(json.dumps(results, default=lm_eval_utils.handle_non_serializable))


def metric_rows(results: dict) -> dict[str, float]:
  """{'eval/<task>/<metric>': value} of lm-eval results: every numeric metric (stderr and
  aliases left out), e.g. eval/jaxscale_stdlib_next_line/acc."""
  rows = {}
  for task, metrics in results['results'].items():
    for key, value in metrics.items():
      metric = key.split(',')[0]  # 'acc,none': the metric under its filter.
      numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
      if metric.endswith('_stderr') or metric == 'sample_len' or not numeric:
        continue
      rows[f'eval/{task}/{metric}'] = float(value)
  return rows
