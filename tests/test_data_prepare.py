"""Embedded datasets are built once even when several processes ask for them at the same time."""

import hashlib
import multiprocessing

import ml_collections

NUM_PROCESSES = 3


def _build_tiny_markov(data_dir: str, barrier, results) -> None:
  """In a fresh process: waits for the others, then asks for the same unbuilt dataset."""
  from jaxscale.data import markov  # pylint: disable=import-outside-toplevel
  config = ml_collections.ConfigDict(
      {'builder_config': 'tiny', 'data_dir': data_dir, 'seq_len': 127})
  barrier.wait()  # All start building together: the race needs no luck.
  try:
    builder = markov.markov(config).builder
    results.put(('ok', _fingerprint(builder)))
  except Exception as e:  # pylint: disable=broad-except
    results.put(('error', repr(e)))


def _fingerprint(builder) -> dict:
  """Per split: its example count in the dataset info and a digest of its tokens."""
  fingerprint = {}
  for split in ('train', 'validation'):
    digest = hashlib.sha256()
    for example in builder.as_dataset(split=split, shuffle_files=False).as_numpy_iterator():
      digest.update(example['tokens'].tobytes())
    fingerprint[split] = (builder.info.splits[split].num_examples, digest.hexdigest())
  return fingerprint


def test_concurrent_builds_of_one_dataset_all_succeed_with_the_same_data(tmp_path):
  context = multiprocessing.get_context('spawn')
  barrier, results = context.Barrier(NUM_PROCESSES), context.Queue()
  processes = [context.Process(target=_build_tiny_markov, args=(str(tmp_path), barrier, results))
               for _ in range(NUM_PROCESSES)]
  for process in processes:
    process.start()
  outcomes = [results.get(timeout=120) for _ in processes]
  for process in processes:
    process.join(timeout=30)
  assert [status for status, _ in outcomes] == ['ok'] * NUM_PROCESSES, outcomes
  fingerprints = [fingerprint for _, fingerprint in outcomes]
  assert fingerprints[0] == {'train': (16, fingerprints[0]['train'][1]),
                             'validation': (8, fingerprints[0]['validation'][1])}
  assert all(fingerprint == fingerprints[0] for fingerprint in fingerprints)
