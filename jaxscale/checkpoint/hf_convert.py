"""A run as a Hugging Face model directory (`to_hf`), and a Hugging Face checkpoint as a
jaxscale workdir (`from_hf`); `python -m jaxscale.convert` is their command line.

`to_hf` writes what `transformers.AutoModelForCausalLM.from_pretrained(DIR)` loads as a
LlamaForCausalLM: `config.json`, `generation_config.json` and `model.safetensors` (or shards of at
most `max_shard_size` bytes with `model.safetensors.index.json`), and the run's tokenizer
(`jaxscale.data.hf_tokenizer`) for `AutoTokenizer.from_pretrained(DIR)`, its end-of-document id
as `eos_token_id`. A LoRA run arrives merged. A run Llama cannot express is refused before
anything is read or written, naming its config key.

`from_hf` writes a workdir as a run would leave it (config.json, a checkpoint at step 0 holding
the parameters, init_report.json, the checkpoint's tokenizer files in `tokenizer/` where it has
them), which `restore_model`, `init_from.workdir`, generation and `to_hf` read like any other.
"""

import json

import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from jaxscale.checkpoint import hf, init_from, restore
from jaxscale.config import config_base, workdir as workdir_lib
from jaxscale.core import param_paths, paths
from jaxscale.data import hf_tokenizer
from jaxscale.models import build

DEFAULT_MAX_SHARD_SIZE = 5 * 2**30  # transformers' save_pretrained default (5 GB).
DTYPES = ('float32', 'bfloat16')
TOKENIZER_DIR = 'tokenizer'  # from_hf's copy of the checkpoint's tokenizer, in the workdir.


def _empty_output(out, what: str) -> epath.Path:
  out = paths.resolve(out)  # Absolute: Orbax refuses relative checkpoint paths.
  if out.exists() and any(out.iterdir()):
    raise hf.HFError(f'{what} {out} is not empty; choose a new directory (nothing was written).')
  return out


def to_hf(workdir, out, *, dtype: str = 'float32', step: int | None = None,
          max_shard_size: int = DEFAULT_MAX_SHARD_SIZE) -> dict:
  """Writes the run in `workdir` to `out` as a Llama model with the run's tokenizer; returns
  what was written."""
  if dtype not in DTYPES:
    raise hf.HFError(f'--dtype={dtype!r}; choose one of {DTYPES}.')
  recorded = workdir_lib.read_config(paths.resolve(workdir))
  hf.refuse_unexportable(recorded.model)  # Before any weight is read.
  out = _empty_output(out, '--out')
  model, config = restore.restore_model(workdir, step=step)  # LoRA adapters merged.
  hf_config = hf.hf_config_from_model(config.model, dtype, config_base.max_seq_len(recorded))
  # First, so that a tokenizer the model cannot take is refused with nothing written.
  tokenizer_kind = hf_tokenizer.write_tokenizer_files(recorded, out)
  tokenizer_files = sorted(p.name for p in out.iterdir()) if tokenizer_kind else []
  token_ids = _special_token_ids(out) if tokenizer_kind else {}
  out.mkdir(parents=True, exist_ok=True)
  hf_config.update(token_ids)
  files = hf.write_safetensors(out, hf.hf_tensors(nnx.state(model, nnx.Param)), dtype=dtype,
                               max_shard_size=max_shard_size)
  (out / hf.CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + '\n')
  # generate() stops at the run's end of document, as jaxscale's generation does.
  (out / hf.GENERATION_CONFIG_FILE).write_text(
      json.dumps({'_from_model_config': True, **token_ids}, indent=2) + '\n')
  return {'out': str(out), 'files': [hf.CONFIG_FILE, hf.GENERATION_CONFIG_FILE, *files,
                                     *tokenizer_files],
          'tokenizer': tokenizer_kind or hf_tokenizer.NO_TOKENIZER}


def _special_token_ids(tokenizer_dir) -> dict[str, int]:
  """config.json's `bos_token_id`, `eos_token_id`, `pad_token_id`: those the tokenizer has."""
  special_ids = hf_tokenizer.load(tokenizer_dir).special_ids
  return {f'{name}_id': special_ids[name] for name in ('bos_token', 'eos_token', 'pad_token')
          if name in special_ids}


def from_hf(hf_dir, out) -> dict:
  """Writes the Hugging Face checkpoint `hf_dir` to `out` as a jaxscale workdir."""
  config = config_base.get_base_config()
  config.init_from.hf = str(hf_dir)
  config = hf.derive_config(config)  # Refuses an unsupported checkpoint, naming the field.
  # Sequences no longer than the checkpoint's positions.
  config.dataset.seq_len = min(config.dataset.seq_len,
                               config.export.max_seq_len or config.dataset.seq_len)
  hf.Checkpoint(hf_dir)  # A missing weights file fails before anything is written.
  out = _empty_output(out, '--out')
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = nnx.eval_shape(lambda: nnx.state(build.model_for(config), nnx.Param))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          abstract)
  params, imported = hf.load_params(hf_dir, abstract)
  if imported.new:
    raise hf.HFError(f'{hf_dir}: no weights for {", ".join(imported.new)}.')
  out.mkdir(parents=True, exist_ok=True)
  if config.dataset.tokenizer != hf_tokenizer.NO_TOKENIZER:  # The workdir keeps its own copy.
    config.dataset.tokenizer = hf_tokenizer.import_keys(
        hf_dir, copy_to=out / TOKENIZER_DIR)['dataset.tokenizer']
  workdir_lib.record_config(out, config)
  manager = ocp.CheckpointManager(
      out / 'checkpoints', item_handlers={'state': ocp.StandardCheckpointHandler()},
      options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False))
  manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave({'params': params})))
  manager.wait_until_finished()
  manager.close()
  report = init_from.Report(source=str(hf_dir), step=0, loaded=imported.loaded, reinitialised=[],
                            new=[], unused=imported.unused, shape_mismatches={})
  init_from.log_and_write(report, out)
  return {'out': str(out), 'params': len(param_paths.named_leaves(params)),
          'tokenizer': config.dataset.tokenizer}
