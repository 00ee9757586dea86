"""The Colab notebooks, executed top to bottom with tiny settings in a fresh kernel.

Each test rewrites the notebook's `parameters` cell, runs every cell with nbclient in a kernel
that imports this working tree's jaxscale, then runs one probe cell that reports what the
notebook computed. Wall times are printed (pytest -s) and recorded as test properties.
"""

import json
import os
import sys
import time

import pytest

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Budget per notebook on a loaded 2-core machine; they take well under half of it.
MAX_SECONDS = 240


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
  """A kernelspec for this interpreter (not whatever `python3` kernel the machine has), and
  the kernel's environment: this checkout first on the path, one CPU device."""
  spec_dir = tmp_path / 'jupyter' / 'kernels' / 'jaxscale-test'
  spec_dir.mkdir(parents=True)
  (spec_dir / 'kernel.json').write_text(json.dumps({
      'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
      'display_name': 'jaxscale test', 'language': 'python'}))
  monkeypatch.setenv('JUPYTER_PATH', str(tmp_path / 'jupyter'))
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join([REPO, *filter(None, [env.get('PYTHONPATH')])])
  # The notebooks' tiny models run fastest on one device; the suite's 8 fake ones are for sharding.
  env['XLA_FLAGS'] = env.get('XLA_FLAGS', '').replace(
      '--xla_force_host_platform_device_count=8', '').strip()
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  # Compiling dominates these seconds-long runs; unoptimised XLA compiles twice as fast.
  env['JAX_DISABLE_MOST_OPTIMIZATIONS'] = '1'
  return env


def _execute(name, parameters, probe, env, record_property):
  """Runs colabs/<name>.ipynb with `parameters`; returns (probe's JSON, the executed notebook)."""
  notebook = nbformat.read(os.path.join(REPO, 'colabs', f'{name}.ipynb'), as_version=4)
  [cell] = [c for c in notebook.cells if 'parameters' in c.metadata.get('tags', [])]
  for key in parameters:
    assert f'\n{key} = ' in f'\n{cell.source}', f'{name} has no parameter {key}'
  cell.source += '\n# Test settings:\n' + '\n'.join(f'{k} = {v!r}' for k, v in parameters.items())
  notebook.cells.append(nbformat.v4.new_code_cell(
      'import json as _json\nprint("PROBE" + _json.dumps(' + probe + '))'))
  client = nbclient.NotebookClient(notebook, timeout=MAX_SECONDS, kernel_name='jaxscale-test',
                                   resources={'metadata': {'path': REPO}})
  start = time.perf_counter()
  client.execute(env=env)
  seconds = time.perf_counter() - start
  record_property('wall_seconds', round(seconds, 1))
  print(f'\n{name}.ipynb ran in {seconds:.1f} s')
  assert seconds < MAX_SECONDS
  [probe_text] = [o['text'] for o in notebook.cells[-1].outputs if o.get('name') == 'stdout']
  return json.loads(probe_text.split('PROBE', 1)[1]), notebook


def _images(notebook) -> int:
  return sum('image/png' in output.get('data', {})
             for cell in notebook.cells for output in cell.get('outputs', []))


def test_notebooks_are_stored_without_outputs_and_open_in_colab():
  for name in ('quickstart', 'scaling_laws'):
    notebook = nbformat.read(os.path.join(REPO, 'colabs', f'{name}.ipynb'), as_version=4)
    nbformat.validate(notebook)
    code_cells = [c for c in notebook.cells if c.cell_type == 'code']
    assert all(not c.outputs and c.execution_count is None for c in code_cells), name
    assert (f'https://colab.research.google.com/github/jaxscale/jaxscale/blob/main/colabs/'
            f'{name}.ipynb') in notebook.cells[0].source
    assert "REPO_URL = 'https://github.com/" in code_cells[0].source


@pytest.mark.slow
def test_quickstart_trains_plots_restores_and_generates(tmp_path, kernel_env, record_property):
  parameters = dict(NUM_TRAIN_STEPS=40, BATCH_SIZE=8, SEQ_LEN=64, NUM_LAYERS=1, D_MODEL=32,
                    MLP_DIM=64, NUM_HEADS=2, DATA_DIR=str(tmp_path / 'tfds'),
                    WORKDIR=str(tmp_path / 'run'), PROMPT='import ', MAX_NEW_TOKENS=24)
  probe = ('{"jaxscale": jaxscale.__file__, "steps": summary["step"], '
           '"train_losses": [r["train_loss"] for r in train_rows], '
           '"greedy": greedy_tokens.tolist(), "sampled": sampled_tokens.tolist(), '
           '"restored_vocab": run_config_restored.model.vocab_size}')
  result, notebook = _execute('quickstart', parameters, probe, kernel_env, record_property)
  assert result['jaxscale'].startswith(os.path.join(REPO, 'jaxscale'))
  assert result['steps'] == 40 and result['restored_vocab'] == 256
  losses = result['train_losses']
  assert losses[-1] < losses[0] - 0.5, losses  # From ~ln 256 = 5.5 nats down.
  assert len(result['greedy']) == len(result['sampled']) == 24
  assert result['greedy'] != result['sampled']
  assert _images(notebook) == 1  # The loss curves.
  text = ''.join(o.get('text', '') for c in notebook.cells for o in c.get('outputs', []))
  assert '--- greedy ---\nimport ' in text


@pytest.mark.slow
def test_scaling_laws_sweeps_fits_plots_and_refits_chinchilla(tmp_path, kernel_env,
                                                              record_property):
  parameters = dict(SWEEP_DIR=str(tmp_path / 'sweep'), BUDGETS=(3e9, 1e10), SIZES_PER_BUDGET=3,
                    EVALS_PER_RUN=1,
                    DATA_DIR=str(tmp_path / 'tfds'), NUM_BOOTSTRAP=20, PREDICT_COMPUTE=1e11)
  probe = ('{"runs": table.num_rows(runs), "planned": len(planned["runs"]), '
           '"unfinished": unfinished, "plan": {k: plan[k] for k in ("N_opt", "D_opt", "loss")}, '
           '"tiny": {k: record[k] for k in ("E", "alpha", "beta")}, '
           '"chinchilla": {k: chinchilla[k] for k in ("E", "alpha", "beta", "a")}, '
           '"chinchilla_ci": chinchilla["ci"]["alpha"]}')
  result, notebook = _execute('scaling_laws', parameters, probe, kernel_env, record_property)
  assert result['runs'] == result['planned'] >= 6 and result['unfinished'] == []
  assert all(value > 0 for value in result['plan'].values()), result['plan']
  assert 0 < result['tiny']['E'] < 4.0  # Below ln(32), the loss of a uniform guess.
  chinchilla = result['chinchilla']
  assert chinchilla['E'] == pytest.approx(1.82, abs=0.02)
  assert chinchilla['alpha'] == pytest.approx(0.348, abs=0.01)
  assert chinchilla['beta'] == pytest.approx(0.366, abs=0.01)
  assert 0.45 < chinchilla['a'] < 0.55  # N_opt grows about as the square root of compute.
  low, high = result['chinchilla_ci']
  assert low <= chinchilla['alpha'] <= high
  assert _images(notebook) == 2  # Tiny sweep (IsoFLOP + frontier) and Chinchilla IsoFLOP.
  text = ''.join(o.get('text', '') for c in notebook.cells for o in c.get('outputs', []))
  assert 'Epoch AI' in text  # The shipped data's source statement is shown.
