"""`python -m jaxscale.hparams search SPEC --dir DIR [--trials N]`: run or resume a search.

Progress goes to stderr (one line per trial started, pruned, failed or finished); the final
summary (trial counts by state, the best trial) prints as JSON on stdout. Rerun the same command
after a kill to resume.
"""

import argparse
import json
import sys

from jaxscale.core import paths
from jaxscale.hparams import search
from jaxscale.scaling.sweeps import run_config


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m jaxscale.hparams search', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('spec', type=paths.resolve_str,
                      help='Sweep spec with a search section, e.g. configs/sweeps/tiny_lr_search.py.')
  parser.add_argument('--dir', type=paths.resolve_str, required=True,
                      help='Search directory (created; holds study.db and trials/).')
  parser.add_argument('--trials', type=int, help='Trials to finish (default: spec.search.num_trials).')
  parser.add_argument('--allow_test_objective', action='store_true',
                      help="Allow an eval objective measured on the test split "
                           "(dataset.eval_split='test'); refused by default, since tuning on "
                           'test leaks it into the reported number.')
  args = parser.parse_args(argv)
  try:
    spec = run_config.load_config_file(args.spec)
    if 'search' not in spec:
      raise ValueError(f'{args.spec} has no `search` section; see configs/sweeps/tiny_lr_search.py.')
    summary = search.run_search(spec, args.dir, args.trials,
                                allow_test_objective=args.allow_test_objective)
  except (ValueError, KeyError, FileNotFoundError) as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  print(json.dumps(summary, indent=1))
  return 0
