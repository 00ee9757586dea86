"""The lower envelope (compute frontier) of loss against training compute."""

import numpy as np


def lower_envelope(compute, loss) -> np.ndarray:
  """Boolean mask of the points no cheaper-or-equal point beats: each one lowers the best loss
  seen so far when points are taken in order of compute."""
  compute, loss = np.asarray(compute, float), np.asarray(loss, float)
  order = np.lexsort((loss, compute))  # By compute, ties broken by loss.
  best_so_far = np.minimum.accumulate(loss[order])
  improves = np.concatenate([[True], loss[order][1:] < best_so_far[:-1]])
  mask = np.zeros(len(loss), bool)
  mask[order[improves]] = True
  return mask


def group_minimum(keys, loss) -> np.ndarray:
  """Boolean mask selecting, for each distinct key, the point with the lowest loss."""
  keys, loss = np.asarray(keys), np.asarray(loss, float)
  mask = np.zeros(len(loss), bool)
  for key in np.unique(keys):
    members = np.flatnonzero(keys == key)
    mask[members[np.argmin(loss[members])]] = True
  return mask


def bin_relative(values, tolerance=0.05) -> np.ndarray:
  """Integer labels grouping values that lie within `tolerance` (relative) of their group's
  smallest member, e.g. runs of one nominal compute budget whose exact FLOPs differ slightly."""
  values = np.asarray(values, float)
  order = np.argsort(values)
  labels = np.empty(len(values), int)
  label, anchor = -1, None
  for index in order:
    if anchor is None or values[index] > anchor * (1 + tolerance):
      label, anchor = label + 1, values[index]
    labels[index] = label
  return labels


def resampled_envelope(compute, loss, counts) -> np.ndarray:
  """`lower_envelope` of the points a bootstrap resample drew (counts > 0), as a mask over all
  points."""
  drawn = np.flatnonzero(np.asarray(counts) > 0)
  mask = np.zeros(len(counts), bool)
  mask[drawn[lower_envelope(np.asarray(compute)[drawn], np.asarray(loss)[drawn])]] = True
  return mask
