"""Runs of a sweep that differ only in multi values train in one program (`grouping`)."""

import io
import json
import os
import subprocess
import sys

import ml_collections
import pytest

from jaxscale.metrics import writers
from jaxscale.scaling import cli
from jaxscale.scaling.sweeps import grouping, launcher, run_config, sweep
from jaxscale.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEARNING_RATES = (3e-3, 1e-2, 3e-2)


def spec(sizes=(2e4, 6e4), tokens=(2e4,), vary=(('optimizer.learning_rate', LEARNING_RATES),),
         cooldown=False, overrides=()):
  s = run_config.load_config_file(os.path.join(REPO, 'configs', 'sweeps', 'tiny_isoflop.py'))
  s.base_config = os.path.join(REPO, 'configs', 'default.py')
  s.kind, s.model_sizes, s.tokens = 'grid', sizes, tokens
  s.overrides = tuple(s.overrides) + ('num_eval_batches=2',) + tuple(overrides)
  s.cooldown = ml_collections.ConfigDict({'enabled': cooldown, 'checkpoint_every_steps': 4})
  s.vary = vary
  return s


def launches(planned, tmp_path, max_models=16):
  return grouping.Grouper(planned, str(tmp_path), max_models).launches(planned['runs'])


def test_runs_of_one_shape_differing_in_learning_rate_share_a_program(tmp_path):
  planned = sweep.plan(spec())
  groups = launches(planned, tmp_path)
  assert [len(launch.runs) for launch in groups] == [3, 3]
  for launch in groups:
    assert len({run['d_model'] for run in launch.runs}) == 1
    assert launch.values == {'learning_rate': list(LEARNING_RATES)}
    command = launch.command(planned, ['w0', 'w1', 'w2'])
    assert command[1:4] == ['-m', 'jaxscale.hparams', 'multi']
    assert '--workdirs=w0,w1,w2' in command
    assert '--values=learning_rate=0.003,0.01,0.03' in command
    # The shared overrides keep the shape and drop the learning rates the values set.
    assert f'--config.model.d_model={launch.runs[0]["d_model"]}' in command
    assert not [item for item in command if 'optimizer.learning_rate' in item]
  assert [len(launch.runs) for launch in launches(planned, tmp_path, max_models=2)] == [2, 1, 2, 1]


def test_runs_that_need_checkpoints_or_a_different_program_train_alone(tmp_path):
  cooled = sweep.plan(spec(sizes=(2e4,), tokens=(2e4, 4e4), cooldown=True))
  assert any('branch_from' in run for run in cooled['runs'])
  assert all(len(launch.runs) == 1 for launch in launches(cooled, tmp_path))  # Trunks, branches.
  lora = sweep.plan(spec(overrides=('lora.rank=2',)))
  assert all(len(launch.runs) == 1 for launch in launches(lora, tmp_path))
  planned = sweep.plan(spec(sizes=(2e4,), vary=(('optimizer.learning_rate', LEARNING_RATES),
                                               ('batch_size', (8, 16)))))
  assert sorted(len(launch.runs) for launch in launches(planned, tmp_path)) == [3, 3]
  # A run with checkpoints of its own resumes from them, as a trainer.
  resuming = planned['runs'][0]
  os.makedirs(tmp_path / 'runs' / resuming['name'] / 'checkpoints' / '4')
  solo = [launch for launch in launches(planned, tmp_path) if not launch.is_group]
  assert [launch.runs[0]['name'] for launch in solo] == [resuming['name']]


def test_vary_names_each_variant_and_branches_from_its_own_trunk():
  planned = sweep.plan(spec(sizes=(2e4,), tokens=(2e4, 4e4), cooldown=True))
  names = {run['name'] for run in planned['runs']}
  assert len(names) == 2 * len(LEARNING_RATES)
  for run in planned['runs']:
    if 'branch_from' in run:
      assert run['branch_from']['run'] in names
      assert run['branch_from']['run'].endswith(run['name'][run['name'].index('_learning_rate'):])
  with pytest.raises(KeyError, match='optimizer.learning_rat'):
    sweep.plan(spec(vary=(('optimizer.learning_rat', (1e-3,)),)))
  with pytest.raises(ValueError, match='pairs'):
    sweep.plan(spec(vary=('optimizer.learning_rate', (1e-3,))))


def test_print_commands_prints_one_line_per_program(tmp_path, capsys):
  sweep.write(sweep.plan(spec()), tmp_path)
  assert cli.main(['run', str(tmp_path), '--print-commands']) == 0
  printed = capsys.readouterr().out
  assert printed.count('-m jaxscale.hparams multi') == 2 and '-m jaxscale.main' not in printed
  assert cli.main(['run', str(tmp_path), '--print-commands', '--no-multi']) == 0
  printed = capsys.readouterr().out
  assert printed.count('-m jaxscale.main') == 6 and 'jaxscale.hparams' not in printed
  for bad in (0, -1):
    with pytest.raises(ValueError, match='max_models_per_program'):
      launcher.print_commands(str(tmp_path), max_models=bad)


def test_a_stopped_group_is_relaunched_for_its_unfinished_runs_only(tmp_path, capsys):
  planned = sweep.plan(spec(sizes=(2e4,)))
  sweep.write(planned, tmp_path)
  done, *rest = [run['name'] for run in planned['runs']]
  (tmp_path / 'runs' / done / 'summary.json').write_text(json.dumps({'finished': True}))
  (tmp_path / 'runs' / rest[0] / 'metrics.jsonl').write_text('{"step": 4}\n')  # Killed mid-way.
  launcher.print_commands(str(tmp_path))
  printed = capsys.readouterr().out
  workdirs = ','.join(str(tmp_path / 'runs' / name) for name in rest)
  assert printed.count('jaxscale.hparams multi') == 1 and f'--workdirs={workdirs} ' in printed
  assert '--values=learning_rate=0.01,0.03 ' in printed


def test_progress_counts_each_run_of_a_group():
  stream = io.StringIO()
  progress = launcher.Progress(total=4, skipped=0, parallel=1, stream=stream)
  progress.started(['a', 'b', 'c'], 'runs/a', 'groups/a.log')
  assert '0/4 done (0 finished, 0 failed, 0 skipped), 3 running, 1 pending' in stream.getvalue()
  progress.finished('a', 'runs/a')
  progress.failed('b', 'groups/a.log', 0)
  assert 'FAILED b (its program went on, but it wrote no finished summary.json)' in (
      stream.getvalue())
  assert stream.getvalue().rstrip().splitlines()[-1].startswith(
      '[sweep] 2/4 done (1 finished, 1 failed, 0 skipped), 1 running, 1 pending; time left: ~')


class CountingPopen(subprocess.Popen):
  commands = []

  def __init__(self, args, **kwargs):
    CountingPopen.commands.append(list(args))
    super().__init__(args, **kwargs)


@pytest.mark.slow
def test_run_all_trains_runs_of_one_shape_in_one_process_as_solo_runs(tmp_path, monkeypatch,
                                                                        capsys):
  planned = sweep.plan(spec())
  small = min(run['d_model'] for run in planned['runs'])
  # Three learning rates of the small shape, one run of the other.
  planned['runs'] = [run for run in planned['runs']
                     if run['d_model'] == small or run['vary']['optimizer.learning_rate'] == 1e-2]
  sweep.write(planned, tmp_path / 'sweep')
  CountingPopen.commands = []
  monkeypatch.setattr(launcher.subprocess, 'Popen', CountingPopen)
  result = launcher.run_all(str(tmp_path / 'sweep'), parallel=2)
  err = capsys.readouterr().err
  assert sorted(result['finished']) == sorted(run['name'] for run in planned['runs'])
  assert not result['failed']
  assert [command[2] for command in CountingPopen.commands].count('jaxscale.hparams') == 1
  assert [command[2] for command in CountingPopen.commands].count('jaxscale.main') == 1
  assert 'started 3 runs in one program' in err and '3 running' in err
  assert '4/4 done (4 finished, 0 failed, 0 skipped)' in err

  grouped = [run for run in planned['runs'] if run['d_model'] == small]
  for run in planned['runs']:
    assert launcher.is_finished(tmp_path / 'sweep' / 'runs' / run['name'])
  point = grouped[1]
  config = run_config.apply_overrides(run_config.load_config_file(planned['base_config']),
                                      point['overrides'])
  loop.run(config, tmp_path / 'solo')
  grouped_dir = tmp_path / 'sweep' / 'runs' / point['name']
  solo_summary = json.loads((tmp_path / 'solo' / 'summary.json').read_text())
  grouped_summary = json.loads((grouped_dir / 'summary.json').read_text())
  assert grouped_summary['eval_loss'] == pytest.approx(solo_summary['eval_loss'], rel=1e-5)
  assert sorted(grouped_summary) == sorted(solo_summary)
  grouped_rows = writers.read_jsonl(grouped_dir / 'metrics.jsonl')
  solo_rows = writers.read_jsonl(tmp_path / 'solo' / 'metrics.jsonl')
  assert [(r['step'], sorted(r)) for r in grouped_rows] == [(r['step'], sorted(r))
                                                            for r in solo_rows]
  assert (json.loads((grouped_dir / 'config.json').read_text()) ==
          json.loads((tmp_path / 'solo' / 'config.json').read_text()))
  # Finished runs are skipped: nothing relaunches.
  assert launcher.run_all(str(tmp_path / 'sweep'))['skipped'] == 4


def test_a_failing_group_reports_each_of_its_runs(tmp_path, capsys):
  planned = sweep.plan(spec(sizes=(2e4,), overrides=('dataset.name=nonexistent',)))
  sweep.write(planned, tmp_path / 'sweep')
  result = launcher.run_all(str(tmp_path / 'sweep'))
  err = capsys.readouterr().err
  names = [run['name'] for run in planned['runs']]
  assert sorted(result['failed']) == sorted(names) and not result['finished']
  group_log = tmp_path / 'sweep' / 'groups' / f'{names[0]}.log'
  assert 'started 3 runs in one program' in err
  for name in names:
    assert f'FAILED {name} (exit status 2); its log: {group_log}' in err
    assert str(group_log) in (tmp_path / 'sweep' / 'runs' / name / 'train.log').read_text()
  assert 'nonexistent' in group_log.read_text() and 'nonexistent' in err.split('last lines:')[-1]
  assert '3/3 done (0 finished, 3 failed, 0 skipped)' in err
