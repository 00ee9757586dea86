"""Special token ids of byte-level text tasks: ids past the 256 byte values.

Byte-level text tasks share these, so a masked-LM encoder pretrained on bytes can be finetuned on
classification with the same vocabulary (and the same embedding table). Bytes keep their own
values 0..255; the specials come after them. The document separator is the exception: it is an id
of the base vocabulary (byte 0; SentencePiece's EOS), which the tokenizer appends to every document.
"""

import dataclasses

NUM_BYTES = 256
# The byte tokenizer's document separator. Python source cannot contain NUL (the compiler
# rejects it) and no text in lm1b or c4 does, so byte 0 is free to mark a document boundary.
BYTE_SEPARATOR = 0
PAD_ID = 256                    # Fills a sequence out to its length; input_mask is 0 there.
CLS_ID = 257                    # Starts every classification input; its output feeds the head.
MASK_ID = 258                   # Replaces the masked positions of masked-LM pretraining.
BYTE_VOCAB_WITH_SPECIALS = 259


@dataclasses.dataclass(frozen=True)
class SpecialIds:
  pad: int
  cls: int
  mask: int
  vocab_size: int  # The base vocabulary and the specials.

  def all_with(self, separator: int) -> tuple:
    """Every special id, with the document separator of the base vocabulary."""
    return (self.pad, self.cls, self.mask, separator)


def after(base_vocab_size: int) -> SpecialIds:
  """The specials placed after a vocabulary of base_vocab_size ids (SentencePiece, bytes)."""
  return SpecialIds(pad=base_vocab_size, cls=base_vocab_size + 1, mask=base_vocab_size + 2,
                    vocab_size=base_vocab_size + 3)


BYTE_SPECIALS = after(NUM_BYTES)
assert (BYTE_SPECIALS.pad, BYTE_SPECIALS.cls, BYTE_SPECIALS.mask, BYTE_SPECIALS.vocab_size) == (
    PAD_ID, CLS_ID, MASK_ID, BYTE_VOCAB_WITH_SPECIALS)
