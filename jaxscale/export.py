"""`python -m jaxscale.export --workdir W --out DIR [--format savedmodel]`: a trained model as
portable files that load without jaxscale; `jaxscale.inference.export` says what DIR receives.
"""

import argparse
import json
import pathlib

from jaxscale.inference import export as export_lib
from jaxscale.inference.export import FORMATS, export_workdir


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python -m jaxscale.export',
                                   description=export_lib.__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', required=True, help='The training run to export.')
  parser.add_argument('--out', required=True, help='Directory to write the files to.')
  parser.add_argument('--format', action='append', choices=FORMATS,
                      help="'jax' (always written) and/or 'savedmodel' (classifiers).")
  parser.add_argument('--step', type=int, default=None, help='Checkpoint step (default newest).')
  parser.add_argument('--max_len', type=int, default=None,
                      help='LMs: KV-cache slots (prompt + new tokens); default 2 x seq_len.')
  parser.add_argument('--max_seq_len', type=int, default=None,
                      help='Token models: the longest input forward.bin takes (any length up to '
                      'it); default config.export.max_seq_len, else the training seq_len.')
  args = parser.parse_args(argv)
  manifest = export_workdir(args.workdir, args.out, formats=('jax', *(args.format or ())),
                            step=args.step, max_len=args.max_len, max_seq_len=args.max_seq_len)
  out = pathlib.Path(args.out)
  sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
  print(json.dumps({'out': str(out), 'kind': manifest['kind'], 'bytes': sizes}))


if __name__ == '__main__':
  main()
