"""The README's commands, read from README.md itself and run as a newcomer would: from the root of
a fresh copy of the repository, with the relative paths the README names.

Each command gets a few appended overrides (fewer steps, a smaller sweep); everything else is the
README's text, so a change to the README that breaks its commands fails here.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Few steps, two checkpoint saves, one eval, on a data dir inside the fresh copy.
RUN_OVERRIDES = ('--config.num_train_steps=4', '--config.checkpoint_every_steps=2',
                 '--config.eval_every_steps=4', '--config.log_every_steps=2',
                 '--config.num_eval_batches=1', '--config.optimizer.warmup_steps=1',
                 '--config.batch_size=4', '--config.dataset.seq_len=64',
                 '--config.dataset.data_dir=tfds')


def _readme() -> str:
  with open(os.path.join(REPO, 'README.md')) as f:
    return f.read()


def _blocks(language: str) -> list[str]:
  return re.findall(rf'^```{language}\n(.*?)^```', _readme(), flags=re.MULTILINE | re.DOTALL)


def _command_lines(block: str) -> list[str]:
  """The block's commands: comments dropped, backslash continuations joined."""
  text = re.sub(r'\\\n\s*', ' ', block)
  return [line.split(' #')[0].strip() for line in text.splitlines()
          if line.strip() and not line.strip().startswith('#')]


def _block_with(needle: str) -> list[str]:
  matches = [_command_lines(b) for b in _blocks('bash') if needle in b]
  assert matches, f'README.md has no bash block containing {needle!r}'
  return matches[0]


def _python_command(line: str) -> list[str]:
  """`pip install -e . && python -m X ...` -> [sys.executable, '-m', 'X', ...] (the install
  already happened: this suite runs in the environment the README's test command made)."""
  *installs, command = [part.strip() for part in line.split('&&')]
  assert all(part.startswith('pip install -e ') for part in installs), line
  argv = shlex.split(command)
  assert argv[0] == 'python', line
  return [sys.executable, *argv[1:]]


@pytest.fixture
def fresh_copy(tmp_path):
  """A repository root as a fresh clone has it (configs included), and an environment in which
  jaxscale imports from this checkout."""
  root = tmp_path / 'repo'
  shutil.copytree(os.path.join(REPO, 'configs'), root / 'configs')
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join([REPO, os.environ.get('PYTHONPATH', '')])}
  env.pop('XLA_FLAGS', None)  # One CPU device, as on a laptop.
  return root, env


def _run(argv, root, env, timeout=900):
  result = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True,
                          timeout=timeout)
  assert result.returncode == 0, f'{shlex.join(argv)}\n{result.stderr[-5000:]}'
  return result


def test_readme_test_command_is_what_ci_runs():
  commands = [line for block in _blocks('bash') for line in _command_lines(block)]
  assert "pip install -e '.[test]' && pytest" in commands
  with open(os.path.join(REPO, '.ci', 'run')) as f:
    ci = f.read()
  assert "pip install -e '.[test]'" in ci and '\npytest\n' in ci


@pytest.mark.slow
def test_readme_quickstart_trains_resumes_and_generates(fresh_copy):
  root, env = fresh_copy
  quickstart = [line for line in _block_with('jaxscale.main --config configs/default.py')
                if 'jaxscale.main' in line][0]
  argv = _python_command(quickstart)
  workdir = root / argv[argv.index('--workdir') + 1]
  assert not os.path.isabs(argv[argv.index('--workdir') + 1]), 'the README shows a relative path'

  _run(argv + list(RUN_OVERRIDES), root, env)
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['2', '4']
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['finished'] and summary['step'] == 4
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows if 'eval_loss' in r] == [4]
  assert list(workdir.glob('events.out.tfevents.*'))

  again = _run(argv + list(RUN_OVERRIDES), root, env)  # "Running it again resumes."
  assert 'Resumed from checkpoint at step 4' in again.stderr

  snippet = [b for b in _blocks('python') if 'sampling.restore_model' in b]
  assert snippet, 'README.md lost its generation example'
  generated = _run([sys.executable, '-c', snippet[0]], root, env)
  assert generated.stdout.startswith('def ') and len(generated.stdout) > 4


def _micro_sweep_spec(path, real_path):
  """Replaces the README's sweep spec in the fresh copy by a micro version of itself: the same
  file's settings with two small budgets and four sizes, on an empty data dir."""
  path.write_text(
      'import importlib.util\n'
      f'spec = importlib.util.spec_from_file_location("real", {real_path!r})\n'
      'real = importlib.util.module_from_spec(spec)\n'
      'spec.loader.exec_module(real)\n\n'
      'def get_config():\n'
      '  c = real.get_config()\n'
      '  c.budgets = (5e8, 1e9)\n'
      '  c.sizes_per_budget = 4\n'
      '  c.shape.max_layers = 2\n'
      "  c.overrides = tuple(c.overrides) + ('dataset.data_dir=tfds', 'dataset.seq_len=32',\n"
      "                                      'batch_size=8', 'num_eval_batches=1')\n"
      '  return c\n')


@pytest.mark.slow
def test_readme_scaling_block_runs_from_a_fresh_copy(fresh_copy):
  root, env = fresh_copy
  lines = _block_with('python -m jaxscale.scaling sweep')
  sweep_line = [line for line in lines if ' sweep ' in line][0]
  spec = shlex.split(sweep_line)[shlex.split(sweep_line).index('--config') + 1]
  _micro_sweep_spec(root / spec, os.path.join(REPO, spec))
  for line in lines:
    argv = _python_command(line)
    if 'fit' in argv and '--bootstrap' not in argv:
      argv += ['--bootstrap', '20']  # Keep the intervals' resampling short.
    _run(argv, root, env)
  sweep_dir = root / shlex.split(sweep_line)[shlex.split(sweep_line).index('--out') + 1]
  planned = json.loads((sweep_dir / 'sweep.json').read_text())['runs']
  assert len(planned) >= 6
  assert len(list((sweep_dir / 'runs').glob('*/summary.json'))) == len(planned)
  assert (sweep_dir / 'fit.json').exists()
  assert list((sweep_dir / 'plots').glob('*.png'))
  assert (root / 'tfds' / 'markov').is_dir()  # Built where the relative data dir points.
