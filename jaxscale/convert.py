"""`python -m jaxscale.convert to-hf --workdir W --out DIR [--dtype float32|bfloat16]` and
`python -m jaxscale.convert from-hf --hf DIR --out W`: a run as a Hugging Face (Llama) model
directory, and a Llama-family checkpoint as a jaxscale workdir (`jaxscale.checkpoint.hf_convert`).
Bad input ends with one line naming the file or config field.
"""

import argparse
import json
import re
import sys

from jaxscale.checkpoint import hf_convert
from jaxscale.config.validation import ConfigError


def _size(text: str) -> int:
  """Bytes from '5GB', '500MB', '2GiB' or a plain integer."""
  match = re.fullmatch(r'(\d+)\s*([KMG]i?B)?', text.strip(), re.IGNORECASE)
  if not match:
    raise argparse.ArgumentTypeError(f'{text!r} is not a size such as 5GB, 500MB or 1000000.')
  unit = (match.group(2) or 'B').upper()
  factor = {'B': 1, 'KB': 10**3, 'MB': 10**6, 'GB': 10**9, 'KIB': 2**10, 'MIB': 2**20,
            'GIB': 2**30}[unit]
  return int(match.group(1)) * factor


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python -m jaxscale.convert', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest='command', required=True)
  to_hf = commands.add_parser('to-hf', help='A run as a Hugging Face Llama model directory.')
  to_hf.add_argument('--workdir', required=True, help='The run to convert.')
  to_hf.add_argument('--out', required=True, help='A new (or empty) directory to write.')
  to_hf.add_argument('--dtype', default='float32', choices=hf_convert.DTYPES)
  to_hf.add_argument('--step', type=int, default=None, help='Checkpoint step (default newest).')
  to_hf.add_argument('--max_shard_size', type=_size, default=hf_convert.DEFAULT_MAX_SHARD_SIZE,
                     help='Largest safetensors file (e.g. 5GB); more go in shards with an index.')
  from_hf = commands.add_parser('from-hf', help='A Hugging Face checkpoint as a jaxscale workdir.')
  from_hf.add_argument('--hf', required=True, help='Directory with config.json and safetensors.')
  from_hf.add_argument('--out', required=True, help='The workdir to write (new or empty).')
  args = parser.parse_args(argv)
  try:
    if args.command == 'to-hf':
      result = hf_convert.to_hf(args.workdir, args.out, dtype=args.dtype, step=args.step,
                                max_shard_size=args.max_shard_size)
    else:
      result = hf_convert.from_hf(args.hf, args.out)
  except (ConfigError, FileNotFoundError) as e:
    sys.exit(f'{args.command}: {e}')
  print(json.dumps(result))


if __name__ == '__main__':
  main()
