"""A trained model as portable files that load without jaxscale: `python -m jaxscale.export`.

  python -m jaxscale.export --workdir workdirs/default --out exported/default
  python -m jaxscale.export --workdir workdirs/mlp_digits --out exported/mlp --format savedmodel

For the newest checkpoint (LoRA adapters merged), DIR receives:
- `forward.bin`: a serialized `jax.export.Exported` (StableHLO) of `forward(params, inputs) ->
  logits` in eval mode, with a symbolic batch dimension, lowered for cpu, cuda and tpu. `params`
  is a flat dict of arrays keyed by '/'-joined variable path ('blocks/0/qkv_DxTxHxK'; batch-norm
  statistics included), `inputs` images [b, H, W, C] float32 or token ids [b, L] int32 (a text
  classifier's padding mask is read off its PAD ids).
- language models also `prefill.bin` (`prefill(params, tokens [b, P], first [b]) -> (logits
  [b, V], keys, values)`: left-padded prompts, real tokens from slot first[b]) and `decode.bin`
  (`decode(params, token [b], keys, values, first [b], length []) -> (logits, keys, values)`),
  over a KV cache of `max_len` slots (jaxscale.models.kv_cache describes its layout).
- `params.npz`: that dict; `manifest.json`: each function's input and output shapes and dtypes,
  the vocabulary or class names, the run's config and the jax version that wrote the files.
- with `--format savedmodel`, classifiers only: `savedmodel/`, a TensorFlow SavedModel (via
  orbax-export) whose `serving_default` signature maps `inputs` to `logits`, for TF Serving.

JAX keeps deserializing an artifact for a limited compatibility window (about six months of
releases, see jax.export's docs); re-export from the workdir after upgrading past it.
"""

import argparse
import json
import pathlib

from jaxscale.inference.export import export_workdir, FORMATS


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python -m jaxscale.export', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', required=True, help='The training run to export.')
  parser.add_argument('--out', required=True, help='Directory to write the files to.')
  parser.add_argument('--format', action='append', choices=FORMATS,
                      help="'jax' (always written) and/or 'savedmodel' (classifiers).")
  parser.add_argument('--step', type=int, default=None, help='Checkpoint step (default newest).')
  parser.add_argument('--max_len', type=int, default=None,
                      help='LMs: KV-cache slots (prompt + new tokens); default 2 x seq_len.')
  args = parser.parse_args(argv)
  manifest = export_workdir(args.workdir, args.out, formats=('jax', *(args.format or ())),
                            step=args.step, max_len=args.max_len)
  out = pathlib.Path(args.out)
  sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
  print(json.dumps({'out': str(out), 'kind': manifest['kind'], 'bytes': sizes}))


if __name__ == '__main__':
  main()
