"""`python -m jaxscale.hparams COMMAND ...`: hyperparameter tools (`--help` on each says more).

  coord-check --config C --widths 64,128,256 [--parametrization sp|mup] [--steps N] [--png P]
                                          μP coordinate check: JSON on stdout and a plot
  search  SPEC --dir DIR [--trials N]     run or resume an Optuna search (DIR/study.db)
          [--storage URL] [--workers N | --worker]   shared by worker processes on any machines
  best    DIR [--out PNG]                 the best trial's config, and objective-vs-parameter plots
  lr-laws DIR [--out FILE]                optimal learning rate and batch size against compute
  multi   --config C --workdirs a,b --values learning_rate=1e-3,3e-3   K models, one program
"""

import importlib
import sys

# Command -> module whose main(argv) runs it (imported on use: `multi` loads JAX, others do not).
COMMANDS = {
    'coord-check': 'jaxscale.hparams.coord_check',
    'search': 'jaxscale.hparams.search_cli',
    'best': 'jaxscale.hparams.best',
    'lr-laws': 'jaxscale.scaling.laws.lr_laws',
    'multi': 'jaxscale.hparams.multi_cli',
}


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if not argv or argv[0] not in COMMANDS:
    asked_for_help = bool(argv) and argv[0] in ('-h', '--help')
    if argv and not asked_for_help:
      print(f'error: unknown command {argv[0]!r}; choose one of: {", ".join(COMMANDS)}.',
            file=sys.stderr)
    print(__doc__, file=sys.stderr)
    return 0 if asked_for_help else 2
  return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == '__main__':
  sys.exit(main())
