"""Adds array_record copies to a prepared TFDS dataset, for `config.dataset.loader='grain'`.

    python -m jaxscale.data.add_array_record ~/tensorflow_datasets/lm1b/subwords8k/1.0.0

The argument is the dataset's version directory (the one holding `dataset_info.json`). The
tfrecord files stay (tf.data reads the eval set from them). The same as TFDS's
`tfds convert_format --out_file_format=array_record`, without its Apache Beam dependency.
"""

from absl import app
from etils import epath
import tensorflow_datasets as tfds

from jaxscale.data import prepare


def main(argv):
  if len(argv) != 2:
    raise app.UsageError('Give one argument: the dataset version directory (it holds '
                         'dataset_info.json).')
  if not (epath.Path(argv[1]) / 'dataset_info.json').exists():
    raise app.UsageError(f'{argv[1]} holds no dataset_info.json: give the version directory of '
                         'a prepared dataset (<data_dir>/<name>[/<config>]/<version>).')
  builder = tfds.builder_from_directory(argv[1])
  prepare.add_array_record(builder)
  print(f'{argv[1]}: array_record files present for splits {sorted(builder.info.splits)}.')


if __name__ == '__main__':
  app.run(main)
