"""The commands of README.md and of the pages in docs/, read from the pages themselves and run as a
newcomer would: from the root of a fresh copy of the repository, with the relative paths the pages
name.

A docs page's commands run literally, in the page's order, at the size the page shows (its
```bash lines, and its ```python blocks in between). The README's quickstart gets a few appended
overrides (fewer steps) and its scaling block a smaller sweep spec; its tour repeats one command
of each docs page, where it runs. Commands that cannot run on a CPU-only machine without cloud
credentials (TPU and GPU launch scripts, gs:// paths, SLURM) are in ```text blocks, and
`test_commands_that_need_a_cluster_are_not_bash` keeps them there.
"""

import glob
import json
import os
import re
import shlex
import shutil
import signal
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

DOCS = sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, 'docs', '*.md')))
PAGES = ['README.md', *DOCS]

# What a command names in the copy it runs in: a fresh clone's files, less tests and notebooks.
COPIED = ('configs', 'benchmarks', 'jaxscale', 'pyproject.toml')


def _text(page: str) -> str:
  with open(os.path.join(REPO, page)) as f:
    return f.read()


def _blocks(language: str, page: str = 'README.md') -> list[str]:
  return re.findall(rf'^```{language}\n(.*?)^```', _text(page), flags=re.MULTILINE | re.DOTALL)


def _command_lines(block: str) -> list[str]:
  """The block's commands: comments dropped, backslash continuations joined."""
  text = re.sub(r'\\\n\s*', ' ', block)
  return [line.split(' #')[0].strip() for line in text.splitlines()
          if line.strip() and not line.strip().startswith('#')]


def _bash_lines(page: str) -> list[str]:
  return [line for block in _blocks('bash', page) for line in _command_lines(block)]


def _block_with(needle: str, page: str = 'README.md') -> list[str]:
  matches = [_command_lines(b) for b in _blocks('bash', page) if needle in b]
  assert matches, f'{page} has no bash block containing {needle!r}'
  return matches[0]


def _steps(page: str) -> list[tuple[str, str]]:
  """The page's ```bash command lines and ```python blocks, in the page's order."""
  steps = []
  for language, body in re.findall(r'^```(bash|python)\n(.*?)^```', _text(page),
                                   flags=re.MULTILINE | re.DOTALL):
    steps += [('bash', line) for line in _command_lines(body)] if language == 'bash' else [
        ('python', body)]
  return steps


def _python_command(line: str) -> list[str]:
  """`pip install -e . && python -m X ...` -> [sys.executable, '-m', 'X', ...] (the install
  already happened: this suite runs in the environment the README's test command made)."""
  *installs, command = [part.strip() for part in line.split('&&')]
  assert all(part.startswith('pip install -e ') for part in installs), line
  argv = shlex.split(command)
  assert argv[0] == 'python', line
  return [sys.executable, *argv[1:]]


def _scaling_block() -> list[str]:
  return _block_with('python -m jaxscale.scaling sweep')


@pytest.fixture(scope='session')
def tfds_data_dir(tmp_path_factory):
  """The TFDS data dir of every copy, as ~/tensorflow_datasets is a user's: each embedded dataset
  is built once, on first use (a command that names `--config.dataset.data_dir` uses its own)."""
  return tmp_path_factory.mktemp('tensorflow_datasets')


@pytest.fixture
def fresh_copy(tmp_path, tfds_data_dir):
  """A repository root as a fresh clone has it (configs, benchmarks, the package), and an
  environment in which jaxscale imports from that copy and `python` is this interpreter."""
  root = tmp_path / 'repo'
  ignore = shutil.ignore_patterns('__pycache__', '*.pyc')
  for name in COPIED:
    source = os.path.join(REPO, name)
    if os.path.isdir(source):
      shutil.copytree(source, root / name, ignore=ignore)
    else:
      shutil.copy(source, root / name)
  env = {**os.environ,
         'PYTHONPATH': os.pathsep.join([str(root), os.environ.get('PYTHONPATH', '')]),
         'PATH': os.pathsep.join([os.path.dirname(sys.executable), os.environ.get('PATH', '')]),
         'TFDS_DATA_DIR': str(tfds_data_dir)}
  env.pop('XLA_FLAGS', None)  # One CPU device, as on a laptop.
  return root, env


def _run(argv, root, env, timeout=900):
  result = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True,
                          timeout=timeout)
  assert result.returncode == 0, f'{shlex.join(argv)}\n{result.stderr[-5000:]}'
  return result


def _json_lines(stdout: str) -> list[dict]:
  return [json.loads(line) for line in stdout.splitlines() if line.startswith('{')]


def test_readme_test_command_is_what_ci_runs():
  assert "pip install -e '.[test]' && pytest" in _bash_lines('README.md')
  with open(os.path.join(REPO, '.ci', 'run')) as f:
    ci = f.read()
  assert "pip install -e '.[test]'" in ci and '\npytest\n' in ci


def test_every_bash_command_is_run_by_a_test():
  """Docs pages run all their lines (test_doc_page_commands_run); the README runs its set-up and
  scaling block, and each other README line is a docs page's line."""
  readme = _bash_lines('README.md')
  setup = [line for line in readme if line.startswith('pip install -e ')]
  assert len(setup) == 2, setup
  docs_lines = {line for page in DOCS for line in _bash_lines(page)}
  tour = [line for line in readme if line not in setup and line not in _scaling_block()]
  assert tour and not [line for line in tour if line not in docs_lines]
  for page in DOCS:  # A page's copy of the README's scaling block is run from the README.
    for block in _blocks('bash', page):
      if 'jaxscale.scaling sweep' in block:
        assert _command_lines(block) == _scaling_block(), page


def test_commands_that_need_a_cluster_are_not_bash():
  """TPU and GPU launches, SLURM, buckets and accelerator wheels cannot run here: text blocks."""
  cluster = re.compile(r"gs://|tpu/|gpu/|sbatch|srun|gcloud|\.\[(tpu|cuda)\]")
  for page in PAGES:
    assert not [line for line in _bash_lines(page) if cluster.search(line)], page
  assert any(cluster.search(block) for block in _blocks('text', 'docs/clusters.md'))


def test_pages_link_to_files_that_exist():
  for page in PAGES:
    for target in re.findall(r'\]\(([^)#\s]+)(?:#[^)]*)?\)', _text(page)):
      if not target.startswith('http'):
        path = os.path.normpath(os.path.join(REPO, os.path.dirname(page), target))
        assert os.path.exists(path), f'{page} links to {target}'
  readme = _text('README.md')
  assert not [page for page in DOCS if f'({page})' not in readme], 'a docs page the README omits'


@pytest.mark.slow
def test_readme_quickstart_trains_and_resumes(fresh_copy):
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


@pytest.mark.slow
def test_readme_scaling_block_runs_from_a_fresh_copy(fresh_copy):
  """The README's scaling block exactly as written, at its own size (12 runs, the default
  bootstrap): a shrunken copy once hid a crash of the README's own `fit`."""
  root, env = fresh_copy
  lines = _scaling_block()
  sweep_line = [line for line in lines if ' sweep ' in line][0]
  results = {line: _run(_python_command(line), root, env) for line in lines}
  sweep_dir = root / shlex.split(sweep_line)[shlex.split(sweep_line).index('--out') + 1]
  planned = json.loads((sweep_dir / 'sweep.json').read_text())['runs']
  assert len(planned) == 12
  assert len(list((sweep_dir / 'runs').glob('*/summary.json'))) == len(planned)
  fit = json.loads((sweep_dir / 'fit.json').read_text())
  # The table that made a resample overflow: resamples that diverge are dropped and counted.
  assert fit['bootstrap_failed'] < (fit['num_bootstrap'] + fit['bootstrap_failed']) / 10
  prediction = json.loads([r for line, r in results.items() if ' predict ' in line][0].stdout)
  assert prediction['N_opt'] > 0 and prediction['D_opt'] > 0
  assert list((sweep_dir / 'plots').glob('*.png'))


def _summary(root, workdir) -> dict:
  return json.loads((root / workdir / 'summary.json').read_text())


def _check_training(root, results):
  summary = _summary(root, 'workdirs/wide')
  assert summary['finished'] and summary['step'] == 20
  assert json.loads((root / 'workdirs/wide/config.json').read_text())['model']['d_model'] == 256


def _check_data(root, results):
  assert _summary(root, 'workdirs/markov_tfdata')['finished']
  assert glob.glob(str(root / 'tfds/markov/*/*/markov-train.array_record*'))
  assert 'tokens/s' in [r for line, r in results.items() if 'throughput' in line][0].stdout
  tokenizer = [r for line, r in results.items() if 'write_tokenizer_files' in line][0]
  assert tokenizer.stdout.split() == ['[195,', '169,', '32,', '60,', '109,', '97,', '115,',
                                      '107,', '62]', '258']
  # A BPE trained on python_stdlib's train split, then a run tokenized by it.
  bpe_run = _summary(root, 'workdirs/default_bpe')
  assert bpe_run['finished'] and bpe_run['eval_bits_per_byte'] < bpe_run['eval_bits_per_token'] / 2
  config = json.loads((root / 'workdirs/default_bpe/config.json').read_text())
  assert (config['dataset']['tokenizer'], config['model']['vocab_size']) == (
      'hf:workdirs/stdlib_bpe', 4096)


def _check_models(root, results):
  assert _summary(root, 'workdirs/mlp_digits')['finished']
  assert (root / 'workdirs/mlp_digits/eval_report.txt').exists()


def _check_sharding(root, results):
  rows = _json_lines([r for line, r in results.items() if 'sharding_memory' in line][0].stdout)
  assert {(r['mesh'], r['constrain_activations']) for r in rows} == {('fsdp=8', True),
                                                                     ('fsdp=8', False)}


def _check_reliability(root, results):
  again = list(results.values())[-1]
  assert 'Resumed from checkpoint at step 20' in again.stderr
  assert sorted(p.name for p in (root / 'workdirs/resume/checkpoints').iterdir()
                if p.name.isdigit()) == ['10', '20']


def _check_transfer(root, results):
  assert _summary(root, 'workdirs/bert_finetune')['finished']
  report = json.loads((root / 'workdirs/bert_finetune/init_report.json').read_text())
  assert report['loaded']


def _check_compression(root, results):
  for workdir in ('workdirs/mlp_distilled', 'workdirs/mlp_pruned'):
    assert _summary(root, workdir)['finished']
  for name in ('int8_aint8', 'int4'):
    result = json.loads((root / 'workdirs/mlp_digits/quantized' / name / 'result.json').read_text())
    assert result['bytes'] < result['float_bytes']


def _check_hyperparameters(root, results):
  assert (root / 'sweeps/lr_transfer/hparam_laws.json').exists()
  assert (root / 'sweeps/lr/search.png').exists()
  assert list(root.glob('coord_check_mup.png'))


def _check_scaling_laws(root, results):
  assert json.loads((root / 'chinchilla_fit.json').read_text())


def _check_deploy(root, results):
  generated = [r for line, r in results.items() if 'sampling.generate' in line][0]
  assert generated.stdout.startswith('def ') and len(generated.stdout) > 4
  calls = [r.stdout for line, r in results.items() if 'forward.call' in line]
  assert '(2, 10)' in calls[0] and '(1, 5, 256)' in calls[1]
  served = json.loads([r for line, r in results.items() if line.startswith('curl')][0].stdout)
  assert served['text'] and served['tokens']
  openai_client = [r for line, r in results.items() if 'client.completions' in line][0]
  assert openai_client.stdout.splitlines()[0] == "['lm']"
  evaluated = json.loads((root / 'workdirs/lm/lm_eval.json').read_text())
  assert set(evaluated['results']) == {'jaxscale_stdlib_next_line', 'jaxscale_stdlib_perplexity'}
  through_server = [r for line, r in results.items() if 'local-completions' in line][0]
  assert 'jaxscale_stdlib_next_line' in through_server.stdout
  assert json.loads((root / 'exported/mlp/manifest.json').read_text())['class_names']


def _check_hugging_face(root, results):
  generated = [r for line, r in results.items() if 'AutoTokenizer' in line][0]
  # transformers' greedy text from the exported run (20 steps in, often spaces) and its prompt.
  assert generated.stdout.rstrip('\n')
  back = json.loads((root / 'workdirs/llama_lora_back/config.json').read_text())
  copy = (root / 'workdirs/llama_lora_back/tokenizer').resolve()
  assert back['dataset']['tokenizer'] == f'hf:{copy}' and (copy / 'tokenizer.json').exists()
  assert back['export']['max_seq_len'] == 256


def _check_efficiency(root, results):
  rows = [row for r in results.values() for row in _json_lines(r.stdout)]
  assert len(rows) == 2 and all(row['tokens_per_s'] > 0 for row in rows)


PAGE_CHECKS = {
    'docs/training.md': _check_training,
    'docs/data.md': _check_data,
    'docs/models.md': _check_models,
    'docs/sharding_and_throughput.md': _check_sharding,
    'docs/reliability.md': _check_reliability,
    'docs/transfer.md': _check_transfer,
    'docs/compression.md': _check_compression,
    'docs/hyperparameters.md': _check_hyperparameters,
    'docs/scaling_laws.md': _check_scaling_laws,
    'docs/deploy.md': _check_deploy,
    'docs/efficiency.md': _check_efficiency,
    'docs/hugging_face.md': _check_hugging_face,
}


def test_every_page_with_commands_is_checked():
  assert sorted(PAGE_CHECKS) == [page for page in DOCS if _bash_lines(page)]


@pytest.mark.slow
@pytest.mark.parametrize('page', sorted(PAGE_CHECKS))
def test_doc_page_commands_run(page, fresh_copy):
  """Every command of the page, literally and in order, in one fresh copy; the README's scaling
  block, where a page repeats it, runs from the README (test_readme_scaling_block_...)."""
  root, env = fresh_copy
  scaling = _scaling_block()
  steps = [(kind, text) for kind, text in _steps(page) if text not in scaling]
  assert steps, page
  results = _run_page_steps(steps, root, env)
  PAGE_CHECKS[page](root, results)


def _run_page_steps(steps, root, env) -> dict[str, subprocess.CompletedProcess]:
  """Runs the steps in order; a line ending in `&` starts in the background (its own process
  group) and is stopped when the page is done. Returns each foreground step's result by its text."""
  results, background = {}, []
  try:
    for kind, text in steps:
      if kind == 'python':
        results[text] = _run([sys.executable, '-c', text], root, env)
      elif text.endswith('&'):
        background.append(subprocess.Popen(['bash', '-c', text[:-1]], cwd=root, env=env,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                           start_new_session=True))
      else:
        results[text] = _run(['bash', '-c', text], root, env)
  finally:
    for process in background:
      os.killpg(process.pid, signal.SIGTERM)
      process.wait(timeout=60)
  return results
