"""The tpu/ and gpu/ launch scripts, run with --dry-run: the printed commands are the right
gcloud/sbatch invocations, carry config overrides verbatim, and nothing is actually called."""

import json
import os
import shlex
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Overrides a shell could mangle: spaces, both quote kinds, $, a glob and a backslash.
TRICKY_OVERRIDES = ['--config.model.d_model=512', "--config.note=it's a \"test\" of $HOME *",
                    '--config.path=a\\b c']


@pytest.fixture
def fake_tools(tmp_path):
  """A PATH whose gcloud, sbatch, srun and scontrol record that they were called and fail."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  calls = tmp_path / 'calls.log'
  for tool in ('gcloud', 'sbatch', 'srun'):
    script = bin_dir / tool
    script.write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\nexit 97\n')
    script.chmod(0o755)
  (bin_dir / 'scontrol').write_text('#!/bin/sh\nprintf "gpu-node-3\\ngpu-node-4\\n"\n')
  (bin_dir / 'scontrol').chmod(0o755)
  env = {**os.environ, 'PATH': f'{bin_dir}:{os.environ["PATH"]}'}
  for name in ('TPU_NAME', 'ZONE', 'PROJECT_ID', 'DRY_RUN', 'SLURM_JOB_NUM_NODES'):
    env.pop(name, None)
  yield env
  assert not calls.exists(), f'a real command was invoked: {calls.read_text()}'


def _run(script, *args, env, check=True):
  result = subprocess.run(['bash', os.path.join(REPO, script), *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=60)
  if check:
    assert result.returncode == 0, result.stderr
  return result


def _commands(stdout) -> list[list[str]]:
  return [shlex.split(line) for line in stdout.splitlines() if line.strip()]


def _flag(argv, name):
  values = [arg.split('=', 1)[1] for arg in argv if arg.startswith(f'--{name}=')]
  assert len(values) == 1, (name, argv)
  return values[0]


def test_create_a_tpu_vm_and_a_queued_resource(fake_tools):
  [argv] = _commands(_run('tpu/create.sh', '--name', 'pod', '--zone', 'us-central2-b',
                          '--project', 'proj', '--accelerator-type', 'v4-32', '--dry-run',
                          env=fake_tools).stdout)
  assert argv[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create'] and argv[5] == 'pod'
  assert _flag(argv, 'zone') == 'us-central2-b' and _flag(argv, 'project') == 'proj'
  assert _flag(argv, 'accelerator-type') == 'v4-32'
  assert _flag(argv, 'version') == 'tpu-ubuntu2204-base'
  assert '--spot' not in argv

  [argv] = _commands(_run('tpu/create.sh', '--name=small', '--zone=us-west4-a', '--queued',
                          '--spot', '--accelerator-type=v5litepod-8', '--dry-run',
                          env=fake_tools).stdout)
  assert argv[:6] == ['gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'small']
  assert _flag(argv, 'node-id') == 'small' and _flag(argv, 'runtime-version') == 'v2-alpha-tpuv5-lite'
  assert '--spot' in argv and not any(arg.startswith('--project') for arg in argv)


def test_setup_installs_on_every_worker(fake_tools):
  [argv] = _commands(_run('tpu/setup.sh', '--name', 'pod', '--zone', 'z', '--repo',
                          'https://example.com/fork.git', '--branch', 'dev', '--dry-run',
                          env=fake_tools).stdout)
  assert argv[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'pod']
  assert '--worker=all' in argv and _flag(argv, 'zone') == 'z'
  remote = _flag(argv, 'command')
  assert 'git clone -q --depth=1 --branch=dev https://example.com/fork.git' in remote
  assert "-e ~/jaxscale'[tpu]'" in remote


def _remote_script(argv) -> str:
  assert argv[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'pod']
  assert '--worker=all' in argv
  return _flag(argv, 'command')


def test_launch_runs_the_trainer_on_every_worker_with_overrides_verbatim(fake_tools, tmp_path):
  """The remote command line, run by a shell as a worker would, calls the trainer with exactly
  the arguments given, keeps its exit status and copies the log to the workdir."""
  workdir = tmp_path / 'run dir'
  [argv] = _commands(_run('tpu/launch.sh', '--name', 'pod', '--zone', 'z', '--config',
                          'configs/default.py', '--workdir', str(workdir), *TRICKY_OVERRIDES,
                          '--dry-run', env=fake_tools).stdout)
  script = _remote_script(argv)

  worker_home = tmp_path / 'worker'
  (worker_home / 'jaxscale').mkdir(parents=True)
  python = worker_home / 'jaxscale-venv' / 'bin' / 'python'
  python.parent.mkdir(parents=True)
  argv_file = tmp_path / 'argv.json'
  python.write_text('#!/usr/bin/env python3\nimport json, os, sys\n'
                    f'json.dump([os.getcwd()] + sys.argv[1:], open({str(argv_file)!r}, "w"))\n'
                    'print("training output")\nsys.exit(3)\n')
  python.chmod(0o755)
  worker = subprocess.run(['bash', '-c', script], env={**fake_tools, 'HOME': str(worker_home)},
                          capture_output=True, text=True, timeout=60)
  assert worker.returncode == 3, worker.stderr  # The trainer's status, not tee's.
  cwd, *trainer_args = json.loads(argv_file.read_text())
  assert cwd == str(worker_home / 'jaxscale')
  assert trainer_args == ['-m', 'jaxscale.main', '--config=configs/default.py',
                          f'--workdir={workdir}', *TRICKY_OVERRIDES]
  [log] = (workdir / 'logs').iterdir()
  assert log.read_text() == 'training output\n'


def test_launch_to_a_bucket_copies_logs_there_and_detach_survives_the_session(fake_tools):
  [argv] = _commands(_run('tpu/launch.sh', '--name', 'pod', '--zone', 'z', '--project', 'p',
                          '--config', 'configs/default.py', '--workdir', 'gs://bucket/runs/a',
                          '--detach', '--dry-run', '--', '--config.num_train_steps=10',
                          env=fake_tools).stdout)
  script = _remote_script(argv)
  assert _flag(argv, 'project') == 'p'
  assert script.startswith('nohup bash -c ') and script.endswith('&')
  inner = shlex.split(script)[3]
  assert 'gcloud storage cp "$log" gs://bucket/runs/a/logs/$(hostname).log' in inner
  assert ('--workdir=gs://bucket/runs/a --config.num_train_steps=10 2>&1 | tee "$log"'
          in inner)


def test_delete_a_vm_or_a_queued_resource(fake_tools):
  [argv] = _commands(_run('tpu/delete.sh', '--name', 'pod', '--zone', 'z', '--dry-run',
                          env=fake_tools).stdout)
  assert argv == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'pod', '--zone=z', '--quiet']
  [argv] = _commands(_run('tpu/delete.sh', '--name', 'pod', '--zone', 'z', '--queued',
                          '--dry-run', env=fake_tools).stdout)
  assert argv[:6] == ['gcloud', 'compute', 'tpus', 'queued-resources', 'delete', 'pod']
  assert '--force' in argv


def test_tpu_name_and_zone_come_from_the_environment(fake_tools):
  env = {**fake_tools, 'TPU_NAME': 'env-tpu', 'ZONE': 'env-zone'}
  [argv] = _commands(_run('tpu/delete.sh', '--dry-run', env=env).stdout)
  assert argv[5] == 'env-tpu' and _flag(argv, 'zone') == 'env-zone'


@pytest.mark.parametrize('script, args, message', [
    ('tpu/create.sh', ['--zone', 'z', '--accelerator-type', 'v4-8'], '--name'),
    ('tpu/create.sh', ['--name', 'n', '--zone', 'z'], '--accelerator-type is required'),
    ('tpu/create.sh', ['--name', 'n', '--zone', 'z', '--accelerator-type', 'v9-8'], '--version'),
    ('tpu/launch.sh', ['--name', 'n', '--zone', 'z', '--workdir', 'gs://b'], '--config'),
    ('tpu/launch.sh', ['--name', 'n', '--zone', 'z', '--config', 'c', '--workdir', 'w',
                       'model.d_model=5'], '--config.KEY=VALUE'),
    ('gpu/submit.sh', ['--config', 'c'], '--workdir'),
])
def test_bad_arguments_fail_before_anything_runs(fake_tools, script, args, message):
  result = _run(script, *args, '--dry-run', env=fake_tools, check=False)
  assert result.returncode == 2 and message in result.stderr, result.stderr


def test_gpu_launch_uses_the_chosen_gpus_and_logs_to_the_workdir(fake_tools):
  out = _run('gpu/launch.sh', '--config', 'configs/default.py', '--workdir', 'runs/x',
             '--gpus', '0,1', *TRICKY_OVERRIDES, '--dry-run', env=fake_tools).stdout
  [argv] = _commands(out)
  assert argv == ['env', 'CUDA_VISIBLE_DEVICES=0,1', 'python3', '-m', 'jaxscale.main',
                  '--config=configs/default.py', '--workdir=runs/x', *TRICKY_OVERRIDES,
                  '2>&1', '|', 'tee', '-a', 'runs/x/train.log']
  assert not os.path.exists(os.path.join(REPO, 'runs', 'x'))


def test_slurm_submission_and_each_tasks_command(fake_tools):
  [argv] = _commands(_run('gpu/submit.sh', '--nodes', '4', '--gpus-per-node', '8',
                          '--partition', 'a100', '--config', 'configs/default.py', '--workdir',
                          '/shared/run', *TRICKY_OVERRIDES, '--dry-run', env=fake_tools).stdout)
  batch_script = argv[-len(TRICKY_OVERRIDES) - 3]
  assert argv[0] == 'sbatch' and batch_script == os.path.join(REPO, 'gpu', 'slurm.sbatch')
  assert _flag(argv, 'nodes') == '4' and _flag(argv, 'gpus-per-node') == '8'
  assert _flag(argv, 'partition') == 'a100'
  assert _flag(argv, 'output') == '/shared/run/logs/slurm-%j.out'
  script_args = argv[-len(TRICKY_OVERRIDES) - 2:]
  assert script_args == ['--config=configs/default.py', '--workdir=/shared/run',
                         *TRICKY_OVERRIDES]

  # What each task then runs, with SLURM's environment of a 2-node job.
  env = {**fake_tools, 'DRY_RUN': '1', 'SLURM_JOB_NUM_NODES': '2',
         'SLURM_JOB_NODELIST': 'gpu-node-[3-4]'}
  export, srun = _commands(_run('gpu/slurm.sbatch', *script_args, env=env).stdout)
  assert export == ['export', 'JAX_COORDINATOR_ADDRESS=gpu-node-3:12345']
  assert srun == ['srun', '--kill-on-bad-exit=1', 'python3', '-m', 'jaxscale.main', *script_args]
  single_node = _commands(_run('gpu/slurm.sbatch', *script_args,
                               env={**fake_tools, 'DRY_RUN': '1'}).stdout)
  assert [argv[0] for argv in single_node] == ['srun']
