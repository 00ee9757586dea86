"""Masked-LM (BERT): predict the chosen tokens of a corrupted sequence, loss on those only."""

from jaxscale.config import validation
from jaxscale.objectives.lm import token_sums
from jaxscale.objectives.mlm_masking import mask_tokens
from jaxscale.objectives.registry import OBJECTIVES


@validation.register_check
def check_mlm(config):
  if config.get('objective') != 'mlm':
    return
  c = config.mlm
  separator = c.get('separator_id', 0)
  if isinstance(separator, bool) or not isinstance(separator, int) or not (
      0 <= separator < c.base_vocab_size):
    raise validation.ConfigError(
        f'config.mlm.separator_id={separator!r} must be an id of the base vocabulary '
        f'[0, {c.base_vocab_size}) (the byte tokenizer: 0; SentencePiece: its EOS id).')


@OBJECTIVES.register('mlm')
def mlm(config=None):
  """On token streams (`inputs`, [B, L] weights) or padded examples (`inputs`, `input_mask`).

  The corruption is drawn from the step's rng, so each step masks afresh and eval (fixed rng)
  masks the same way every time. Eval rows log the loss and accuracy on the chosen tokens. No
  special token (pad, CLS, mask, the document separator) is chosen or drawn as a replacement.
  """
  from jaxscale.data import special_tokens  # noqa: PLC0415  (jaxscale.data loads TensorFlow)
  mask_rate = config.mlm.mask_rate if config is not None else 0.15
  base_vocab_size = config.mlm.base_vocab_size if config is not None else special_tokens.NUM_BYTES
  separator = special_tokens.BYTE_SEPARATOR
  if config is not None:  # A config saved before separator_id had byte tokens.
    separator = config.mlm.get('separator_id', separator)
  specials = special_tokens.after(base_vocab_size)

  def sums(model, batch, *, train: bool, rng):
    del train
    input_mask_BxL = batch.get('input_mask')
    inputs_BxL, targets_BxL, weights_BxL = mask_tokens(
        rng, batch['inputs'], input_mask_BxL=input_mask_BxL, mask_id=specials.mask,
        vocab_size=specials.vocab_size, mask_rate=mask_rate,
        special_ids=specials.all_with(separator), random_vocab_size=base_vocab_size)
    if batch['weights'].ndim == 2:  # A token stream's own weights (0 past the end of the data).
      weights_BxL = weights_BxL * batch['weights']
    args = (inputs_BxL,) if input_mask_BxL is None else (inputs_BxL, input_mask_BxL)
    return token_sums(model(*args), targets_BxL, weights_BxL)

  return sums
