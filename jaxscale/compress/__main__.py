"""`python -m jaxscale.compress`: compress a trained run.

  quantize --workdir W --weights int8|int4 [--activations int8] [--out DIR]
      Post-training quantization (Qwix) of W's newest checkpoint, evaluated on W's eval set;
      prints one JSON object and writes it to DIR/result.json
      (default W/quantized/<weights>[_a<activations>]/).
"""

import argparse
import json
import sys


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m jaxscale.compress', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest='command', required=True)
  quantize = commands.add_parser(
      'quantize', help='post-training quantization of a run, evaluated on its eval set')
  quantize.add_argument('--workdir', required=True, help='a trained run (local or gs://)')
  quantize.add_argument('--weights', required=True, choices=('int8', 'int4'),
                        help='weight type, per output channel')
  quantize.add_argument('--activations', default='', choices=('int8', ''),
                        help="activation type (dynamic, per token); '' or absent: float")
  quantize.add_argument('--out', default=None,
                        help='directory for result.json (default W/quantized/<weights>[_a<act>])')
  return parser


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  from jaxscale.inference import ptq  # noqa: PLC0415  (loads JAX and TensorFlow)
  try:
    result = ptq.quantize_run(args.workdir, args.weights, args.activations, args.out)
  except (FileNotFoundError, RuntimeError) as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  print(json.dumps(result))
  return 0


if __name__ == '__main__':
  sys.exit(main())
