"""`python -m jaxscale.scaling SUBCOMMAND`: plan, run and collect sweeps; fit, predict, plot,
compare and validate scaling laws. Results print as JSON on stdout (progress and errors go to
stderr); `--help` on each subcommand says more. Relative paths are taken from the current
directory and resolved once, where they are parsed (gs:// and other URIs are left as they are).

  sweep    --config configs/sweeps/X.py --out DIR      plan runs (DIR/sweep.json, DIR/runs/*)
  run      DIR [--parallel K] [--print-commands]       train them (resumable; exit 1 if any fails;
           [--no-multi] [--max-models-per-program K]   runs differing only in LR, weight decay,
                                                       seed, init scale share one program)
           [--launcher local|slurm|submitit-local|print] [--partition P --time MIN ...]
  status   DIR                                         each run's state and the counts
  collect  DIR --out runs.csv [--all-points]           one row per run (or per eval)
  fit      --csv runs.csv --law chinchilla --approach 3 --out fit.json [--fix E=1.6]
           [--law auto]                                 the form that backtests best
           [--target eval/TASK/METRIC]                  a downstream metric against loss
  predict  --fit fit.json --compute 1e21 | --N 1e9 --D 2e10
           [--compute 1e21 --emit-config run.py --sweep DIR]   a runnable compute-optimal config
  plot     --csv runs.csv --fit fit.json --out DIR
  compare  --baseline A.csv --variant B.csv
  validate --csv runs.csv [--law auto|FORM]            rolling backtest + held-out check
  (fit, validate, plot, compare: --columns N=params,D=tokens,C=flops,loss=eval/loss)
  verify   DIR --budget C                              fit, run the optimum for C, score it
"""

import argparse
import json
import os
import sys

from jaxscale.core import paths
from jaxscale.scaling.analysis import (
    calibration, compare, plots, predict, selection, validate, verify)
from jaxscale.scaling.laws import catalog, downstream, fits, forms
from jaxscale.scaling.runs import collect, table
from jaxscale.scaling.sweeps import emit_config, jobs, launcher, run_config, shapes, sweep


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  try:
    result = args.handler(args)
  except (ValueError, KeyError, OSError, RuntimeError, ArithmeticError) as error:
    # A data problem is one line and a non-zero exit, never a traceback.
    message = ' '.join(str(error).split()) or type(error).__name__
    print(f'error: {message}', file=sys.stderr)
    return 2
  if result is not None:
    print(json.dumps(jsonable(result), indent=1))
  return args.exit_code(args, result)


jsonable = fits.jsonable


def read_runs(path, args, label='csv'):
  """The run table at `path` with N, D, C and loss mapped (`--columns`, else common names); the
  mapping used goes to stderr, so stdout stays JSON."""
  runs, mapping = table.map_columns(table.read_csv(path), table.parse_columns(args.columns),
                                    source=path)
  print(f'columns ({label}): {table.describe_mapping(mapping)}', file=sys.stderr)
  return runs


def _fit(args):
  if args.target:
    record = downstream.fit(table.read_csv(args.csv), args.target)
    fits.save(jsonable(record), args.out)
    return record
  record = selection.fit(read_runs(args.csv, args), args.law, args.approach,
                         forms.parse_fixed(args.fix), not args.no_offset, args.bootstrap, args.seed,
                         args.coverage, args.weight_by_stderr)
  fits.save(jsonable(record), args.out)
  if 'selection' in record:
    print(f'law: {record["selection"]["why"]}', file=sys.stderr)
  warn_degenerate(record, args.out)
  return _summary(record)


def warn_degenerate(record: dict, source) -> None:
  """Names each degenerate parameter of a fit on stderr (fit.json lists them too)."""
  for flag in record.get('degenerate') or []:
    print(f'warning: degenerate fit ({source}): {flag}', file=sys.stderr)


def _summary(record: dict) -> dict:
  """A fit record without its per-resample values and point lists, for the terminal."""
  return {key: _summary(value) if isinstance(value, dict) else value
          for key, value in record.items() if key not in ('bootstrap', 'envelope', 'minima')}


def _predict(args):
  record = fits.load(args.fit)
  warn_degenerate(record, args.fit)
  if args.emit_config:
    if args.compute is None or not args.sweep:
      raise ValueError('--emit-config needs --compute and --sweep (the fitted sweep directory).')
    run = emit_config.compute_optimal_run(record, args.sweep, args.compute)
    emit_config.write(run, args.emit_config, args.fit, args.sweep)
    return {'config': args.emit_config, **{key: run[key] for key in (
        'N', 'D', 'C', 'steps', *shapes.SHAPE_KEYS, 'prediction')}}
  if args.compute is not None:
    result = predict.at_compute(record, args.compute)
  elif args.N is None and args.D is None:
    raise ValueError('predict needs --compute, or --N and --D.')
  else:
    result = predict.at_size(record, args.N, args.D)
  if 'compute_range' in result:
    print(f'extrapolation: {result["compute_range"]}', file=sys.stderr)
  if 'warning' in result:
    print(f'warning: {result["warning"]}', file=sys.stderr)
  return result


def _plot(args):
  return {'written': plots.plot_all(read_runs(args.csv, args), fits.load(args.fit), args.out)}


def _compare(args):
  return compare.compare(read_runs(args.baseline, args, 'baseline'),
                         read_runs(args.variant, args, 'variant'),
                         forms.parse_fixed(args.fix), args.bootstrap, args.seed)


def _validate(args):
  report = validate.validate(read_runs(args.csv, args), args.holdout_fraction,
                           forms.parse_fixed(args.fix), args.bootstrap, args.seed, args.law,
                           args.coverage)
  if 'selection' in report:
    print(f'law: {report["selection"]["why"]}', file=sys.stderr)
  return report


def _verify(args):
  options = {'law': args.law, 'approach': args.approach, 'fixed': forms.parse_fixed(args.fix),
             'num_bootstrap': args.bootstrap, 'seed': args.seed, 'nominal': args.coverage}
  return verify.verify(args.dir, args.budget, options)


def _sweep(args):
  spec = run_config.load_config_file(args.config)
  if 'search' in spec:
    # A search's runs are decided as it goes (each trial from the ones before), so there is no
    # plan to write: the search command plans, runs and resumes it in one.
    raise ValueError(f'{args.config} has a `search` section: a hyperparameter search, not a '
                     f'planned sweep. Run it with `python -m jaxscale.hparams search {args.config} '
                     f'--dir {args.out}` (resumable the same way).')
  planned = sweep.plan(spec)
  sweep.write(planned, args.out)
  return {'out': args.out, 'num_runs': len(planned['runs']),
          'runs': [{key: run[key] for key in ('name', 'budget', 'N', 'D', 'C', 'steps')}
                   for run in planned['runs']]}


def _run(args):
  multi = False if args.no_multi else None  # None: the spec's `multi` (default on).
  launcher_name = 'print' if args.print_commands else args.launcher
  if args.target != 'shell' and launcher_name != 'print':
    raise ValueError(f'--target {args.target} goes with --launcher print (it prints commands).')
  if launcher_name == 'print':
    launcher.print_commands(args.dir, multi=multi, max_models=args.max_models_per_program,
                            target=args.target,
                            tpu={'name': args.tpu_name, 'zone': args.zone,
                                 'project': args.project})
    return None
  if launcher_name == 'local':
    return launcher.run_all(args.dir, args.parallel, multi=multi,
                            max_models=args.max_models_per_program)
  options = jobs.SlurmOptions(
      partition=args.partition, account=args.account, time_min=args.time,
      gpus_per_node=args.gpus_per_node, nodes_per_run=args.nodes_per_run,
      cpus_per_task=args.cpus_per_task, max_concurrent=args.max_concurrent)
  submitted = jobs.submit(args.dir, launcher_name, options, multi=multi,
                          max_models=args.max_models_per_program, stream=sys.stderr)
  if not args.wait:
    return submitted
  done = jobs.wait(args.dir, submitted['submitted'] + submitted['queued'])
  return {**done, 'skipped': len(submitted['finished']), 'job_ids': submitted['job_ids'],
          'waiting': submitted['waiting']}


def _status(args):
  return jobs.status(args.dir)


def _run_exit_code(args, result) -> int:
  """1 if any run failed, after naming each on stderr with its train.log."""
  if not result or not result.get('failed'):
    return 0
  lines = [f'error: {len(result["failed"])} run(s) of the sweep failed:']
  for name in result['failed']:
    log = launcher.log_path(launcher.run_dir(args.dir, {'name': name}))
    lines.append(f'  {name}: {log}' if os.path.exists(log) else
                 f'  {name}: never started (its trunk did not finish)')
  print('\n'.join(lines), file=sys.stderr)
  return 1


def _collect(args):
  rows, unfinished = collect.collect(args.dir, args.all_points)
  collect.write(rows, args.out)
  return {'out': args.out, 'rows': len(rows), 'unfinished_runs': unfinished}


LAUNCHERS = ('local', 'slurm', 'submitit-local', 'print')


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m jaxscale.scaling', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest='command', required=True)
  path = paths.resolve_str  # Every path argument: absolute from here on, so files and children agree.

  def command(name, handler, help_text):
    sub = commands.add_parser(name, help=help_text, description=help_text)
    sub.set_defaults(handler=handler, exit_code=lambda args, result: 0)
    return sub

  def add_fit_options(sub):
    sub.add_argument('--fix', action='append', default=[], metavar='NAME=VALUE',
                     help='Pin a parameter, e.g. --fix E=1.6 (repeatable).')
    sub.add_argument('--bootstrap', type=int, default=1000, metavar='K',
                     help='Bootstrap resamples for intervals (0: none).')
    sub.add_argument('--seed', type=int, default=0, help='Seed of the bootstrap resampling.')

  def add_columns_option(sub):
    sub.add_argument('--columns', default='', metavar='N=COL,D=COL,C=COL,loss=COL',
                     help='Which CSV columns are N, D, C and loss, e.g. N=params,D=tokens,'
                          'C=flops,loss=eval/loss. Unnamed ones are found by common names '
                          '(params, n_params, tokens, tokens_seen, flops, compute, eval_loss, '
                          'eval/loss, ...); the mapping used is printed on stderr.')

  def add_coverage_option(sub):
    sub.add_argument('--coverage', type=float, default=calibration.NOMINAL_COVERAGE,
                     help='Nominal coverage of the backtest-calibrated prediction intervals.')

  sub = command('fit', _fit, 'Fit a scaling law to a run table.')
  add_columns_option(sub)
  sub.add_argument('--csv', type=path, required=True,
                   help='Runs: columns N, D, loss (C optional: 6ND).')
  sub.add_argument('--law', choices=fits.LAWS + ('auto',), default='chinchilla',
                   help='auto: the law form with the lowest rolling-backtest error (says why).')
  sub.add_argument('--approach', type=int, choices=(1, 2, 3), default=3,
                   help='Chinchilla approach: 1 envelope, 2 IsoFLOP parabolas, 3 parametric.')
  sub.add_argument('--no-offset', action='store_true',
                   help='Kaplan laws without an irreducible loss (pins E=0).')
  sub.add_argument('--out', type=path, required=True, help='fit.json to write.')
  sub.add_argument('--weight-by-stderr', action='store_true',
                   help='Approach 3: weight each run by (loss / eval_loss_stderr)^2, the '
                        'precision of its log loss (needs the eval_loss_stderr column).')
  sub.add_argument('--target', metavar='eval/TASK/METRIC',
                   help='Fit this downstream metric (a column collect wrote from config.lm_eval) '
                        'against loss, error = epsilon - k exp(-gamma loss) (error = 1 - accuracy), '
                        'and through a loss law L(C) against compute.')
  add_fit_options(sub)
  add_coverage_option(sub)

  sub = command('predict', _predict, 'Predict from a fit.json, with bootstrap intervals.')
  sub.add_argument('--fit', type=path, required=True)
  sub.add_argument('--compute', type=float, help='Training FLOPs: compute-optimal N, D, loss.')
  sub.add_argument('--N', type=float, help='Parameters (with --D: the loss of that run).')
  sub.add_argument('--D', type=float, help='Training tokens.')
  sub.add_argument('--emit-config', type=path, metavar='FILE.py',
                   help='With --compute and --sweep: write a runnable config for the optimum.')
  sub.add_argument('--sweep', type=path, metavar='DIR',
                   help='The sweep directory the fit came from.')

  sub = command('plot', _plot, 'Write PNG figures of a fit against its runs.')
  add_columns_option(sub)
  sub.add_argument('--csv', type=path, required=True)
  sub.add_argument('--fit', type=path, required=True)
  sub.add_argument('--out', type=path, required=True, help='Directory for the PNGs.')

  sub = command('compare', _compare, "A variant's effective compute multiplier over a baseline.")
  add_columns_option(sub)
  sub.add_argument('--baseline', type=path, required=True,
                   help='Baseline runs CSV (C, loss; or N, D).')
  sub.add_argument('--variant', type=path, required=True, help='Variant runs CSV.')
  add_fit_options(sub)

  sub = command('validate', _validate,
                'Fit on the cheaper runs, check predictions for the most expensive ones.')
  add_columns_option(sub)
  sub.add_argument('--csv', type=path, required=True)
  sub.add_argument('--holdout-fraction', type=float, default=validate.HOLDOUT_FRACTION,
                   help='Fraction of runs (largest compute, whole budgets) held out.')
  sub.add_argument('--law', choices=tuple(catalog.FORMS) + ('auto',), default='auto',
                   help='Law form to backtest (chinchilla: Approach 3; auto, the default: the '
                        'form that backtests best on the training runs, as fit --law auto).')
  add_fit_options(sub)
  add_coverage_option(sub)

  sub = command('verify', _verify, 'Fit a sweep, run its compute-optimal config for --budget, '
                'and score the prediction into DIR/verify.jsonl (resumable).')
  sub.add_argument('dir', type=path, help='Sweep directory (its finished runs are fitted).')
  sub.add_argument('--budget', type=float, required=True, help='Training FLOPs of the new run.')
  sub.add_argument('--law', choices=fits.LAWS + ('auto',), default='chinchilla')
  sub.add_argument('--approach', type=int, choices=(1, 2, 3), default=3)
  add_fit_options(sub)
  add_coverage_option(sub)

  sub = command('sweep', _sweep, 'Plan a sweep from a spec file.')
  sub.add_argument('--config', type=path, required=True,
                   help='Sweep spec, e.g. configs/sweeps/X.py.')
  sub.add_argument('--out', type=path, required=True, help='Sweep directory to create.')

  sub = command('run', _run, "Train a sweep's unfinished runs (resumable); exit 1 if any fails.")
  sub.set_defaults(exit_code=_run_exit_code)
  sub.add_argument('dir', type=path, help='Sweep directory.')
  sub.add_argument('--parallel', type=int, default=1, metavar='K', help='Runs at once.')
  sub.add_argument('--launcher', choices=LAUNCHERS, default='local',
                   help='local: a pool of --parallel processes here (default); slurm: one SLURM '
                        'job array through submitit; submitit-local: the same jobs through '
                        "submitit's local executor, on this machine; print: the commands.")
  sub.add_argument('--print-commands', action='store_true', help='Same as --launcher print.')
  sub.add_argument('--target', choices=('shell', 'tpu'), default='shell',
                   help='--launcher print: trainer commands (shell) or tpu/launch.sh lines.')
  sub.add_argument('--tpu-name', help='--target tpu: the TPU VM (default: $TPU_NAME).')
  sub.add_argument('--zone', help='--target tpu: its zone (default: $ZONE).')
  sub.add_argument('--project', help='--target tpu: its project (default: $PROJECT_ID).')
  sub.add_argument('--wait', action='store_true',
                   help='slurm, submitit-local: wait for the jobs and report like local.')
  slurm = sub.add_argument_group('slurm and submitit-local jobs (one array element per run or '
                                 'multi program)')
  slurm.add_argument('--partition')
  slurm.add_argument('--account')
  slurm.add_argument('--time', type=int, default=60, metavar='MINUTES',
                     help='Time limit per job; a job preempted or timed out is requeued.')
  slurm.add_argument('--gpus-per-node', type=int, default=0)
  slurm.add_argument('--nodes-per-run', type=int, default=1,
                     help="Nodes per run, one process each (default: the spec's nodes_per_run, "
                          'else 1).')
  slurm.add_argument('--cpus-per-task', type=int)
  slurm.add_argument('--max-concurrent', type=int, metavar='K', help='Array elements at once.')
  sub.add_argument('--no-multi', action='store_true',
                   help='One trainer process per run, even for runs that differ only in learning '
                        'rate, weight decay, seed or init scale (by default those share one '
                        'compiled program, `python -m jaxscale.hparams multi`).')
  sub.add_argument('--max-models-per-program', type=int, metavar='K',
                   help="Most runs one program trains (default: the spec's "
                        'max_models_per_program, else 16).')

  sub = command('status', _status, "Each run's state (planned, queued, running, finished, "
                'failed with its log tail) and the counts.')
  sub.add_argument('dir', type=path, help='Sweep directory.')

  sub = command('collect', _collect, 'Collect finished runs into a CSV.')
  sub.add_argument('dir', type=path, help='Sweep directory (or any directory of workdirs).')
  sub.add_argument('--out', type=path, required=True, help='CSV to write.')
  sub.add_argument('--all-points', action='store_true', help='One row per eval, not per run.')
  return parser
