"""Clear errors for input data a run cannot read: not prepared, not downloadable, not permitted.

TFDS reports these as an AssertionError ("could not find data"), a network error after minutes
of download retries, or a permission error deep in tf.data; `explained` turns each into one
message saying which dataset, where it looked, and what to do.
"""

import contextlib

from jaxscale.config.validation import ConfigError


class DatasetUnavailableError(ConfigError):
  pass


@contextlib.contextmanager
def explained(dataset_config):
  """Re-raises unreadable-dataset errors from the block as DatasetUnavailableError."""
  try:
    yield
  except ConfigError:
    raise
  except Exception as e:  # noqa: BLE001  (anything else is re-raised unchanged)
    message = _explain(e, dataset_config)
    if message is None:
      raise
    raise DatasetUnavailableError(message) from e


def _first_line(error: BaseException) -> str:
  return f'{type(error).__name__}: {(str(error).splitlines() or [""])[0][:300]}'


def _explain(error: Exception, dataset_config) -> str | None:
  import requests  # noqa: PLC0415  (TFDS downloads through requests)
  import tensorflow as tf  # noqa: PLC0415
  import tensorflow_datasets as tfds  # noqa: PLC0415

  name = dataset_config.name
  where = dataset_config.data_dir or '~/tensorflow_datasets (the TFDS default data_dir)'
  if isinstance(error, (PermissionError, tf.errors.PermissionDeniedError)):
    return (f'Cannot read dataset {name!r} in {where}: permission denied ({_first_line(error)}). '
            'Make it readable by this user, or set --config.dataset.data_dir to a readable copy.')
  not_prepared = (
      isinstance(error, (tfds.download.DownloadError, requests.exceptions.RequestException,
                         tf.errors.NotFoundError, FileNotFoundError))
      or 'could not find data' in str(error).lower())
  if not not_prepared:
    return None
  tfds_name = name + (f'/{dataset_config.builder_config}' if dataset_config.builder_config else '')
  return (f'Dataset {name!r} is not prepared in {where}, and it could not be prepared here '
          f'({_first_line(error)}). Prepare it with `tfds build {tfds_name} --data_dir DIR` on a '
          'machine that can download it (or copy a prepared data_dir there), then pass '
          '--config.dataset.data_dir=DIR.')
