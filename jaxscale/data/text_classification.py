"""Text classification datasets: stdlib_packages (embedded), glue/sst2, imdb_reviews.

stdlib_packages is built locally on first use from the running interpreter's standard library.
The others load through their real TFDS builders from a prepared data dir (tested offline with
`tfds.testing.mock_data`); nothing here downloads them.
Texts are byte tokens by default (ids 0..255, then PAD, CLS and MASK, see `special_tokens`), or
SentencePiece pieces with the same three specials after its vocabulary.
"""

import sys

from jaxscale.data import sources, special_tokens, subsets, tokenizers
from jaxscale.data.builders import stdlib_packages as stdlib_packages_builder
from jaxscale.data.sources import DATASETS, TextClassSource, data_dir_or_default

_HOW_TO_PREPARE = {
    'glue/sst2': 'run `tfds build glue/sst2 --data_dir=DIR` on a machine with internet (~7 MB)',
    'imdb_reviews': (
        'run `tfds build imdb_reviews --data_dir=DIR` on a machine with internet (~80 MB)'),
}


def text_class_source(builder, *, train_split: str, eval_split: str, text_key: str,
                      dataset_config, info: dict | None = None,
                      holdout: float = 0.0) -> TextClassSource:
  tokenizer = tokenizers.make_tokenizer(dataset_config.tokenizer, dataset_config.spm_model_path)
  specials = special_tokens.after(tokenizer.vocab_size)
  return TextClassSource(
      builder=builder, train_split=train_split, eval_split=eval_split, text_key=text_key,
      holdout=holdout, num_classes=builder.info.features['label'].num_classes,
      # Both tokenizers end a document with one separator; a classifier's input has none.
      to_tokens=lambda text: tokenizer.tokenize_document(text)[:-1],
      pad_id=specials.pad, cls_id=specials.cls, vocab_size=specials.vocab_size,
      class_names=sources.class_names_of(builder),
      info={'tokenizer': dataset_config.tokenizer,
            **{f'num_{name}_examples': split.num_examples
               for name, split in builder.info.splits.items()},
            **(info or {})})


@DATASETS.register('stdlib_packages')
def stdlib_packages(dataset_config) -> TextClassSource:
  """Which of 16 standard-library packages a 256-byte source snippet comes from."""
  builder = stdlib_packages_builder.StdlibPackages(
      config=sources.builder_config_or_default(dataset_config),
      data_dir=data_dir_or_default(dataset_config), file_format='tfrecord')
  builder.download_and_prepare()  # Reads the local stdlib the first time; a no-op after.
  return text_class_source(builder, train_split='train', eval_split='validation', text_key='text',
                           dataset_config=dataset_config, info={'python_version': sys.version})


@DATASETS.register('glue/sst2')
def sst2(dataset_config) -> TextClassSource:
  """Sentence sentiment (negative, positive). Its test labels are hidden (-1): eval on validation."""
  return text_class_source(
      sources.prepared_builder('glue/sst2', dataset_config, _HOW_TO_PREPARE['glue/sst2']),
      train_split='train', eval_split='validation', text_key='sentence',
      dataset_config=dataset_config)


@DATASETS.register('imdb_reviews')
def imdb_reviews(dataset_config) -> TextClassSource:
  """Movie review sentiment (neg, pos); 25k train and 25k test reviews. It has no validation
  split: a stratified 10% of train is held out as one (`subsets.HOLDOUT`), what runs evaluate
  on; test only with `dataset.eval_split='test'`."""
  return text_class_source(
      sources.prepared_builder('imdb_reviews', dataset_config, _HOW_TO_PREPARE['imdb_reviews']),
      train_split='train', eval_split=subsets.CARVED_SPLIT, text_key='text',
      dataset_config=dataset_config, holdout=subsets.HOLDOUT)
