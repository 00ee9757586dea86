"""`python -m jaxscale.hparams SUBCOMMAND [args]`: tools for hyperparameters across scale.

  coord-check  --config configs/X.py --widths 64,128,256 [--parametrization sp|mup]
               [--steps N] [--png PATH]      μP coordinate check: JSON on stdout and a plot

`python -m jaxscale.hparams SUBCOMMAND --help` says more.
"""

import importlib
import sys

# Subcommand -> module whose `main(argv) -> exit status` runs it (imported only when chosen).
SUBCOMMANDS = {
    'coord-check': 'jaxscale.hparams.coord_check',
}


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] not in SUBCOMMANDS:
    given = f'Unknown subcommand {argv[0]!r}. ' if argv and argv[0] not in ('-h', '--help') else ''
    sys.stderr.write(f'{given}Usage: python -m jaxscale.hparams {{{",".join(SUBCOMMANDS)}}} '
                     '[args]\n')
    return 0 if argv and argv[0] in ('-h', '--help') else 2
  return importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:])


if __name__ == '__main__':
  sys.exit(main())
