"""Run tables: CSV in and out, and the checks every fit makes before it trusts a column.

A table is a plain dict of column name -> 1-D numpy array (float where every cell parses as a
number, str otherwise). Fits fail loudly here, naming the column and row, rather than fitting
garbage: a missing column, a NaN, or a non-positive size, token count, FLOP count or loss.
"""

import csv
import math

import numpy as np

Table = dict[str, np.ndarray]

# 6 FLOPs per parameter per token (forward + backward), the convention when C is not measured.
FLOPS_PER_PARAM_TOKEN = 6.0


def read_csv(path) -> Table:
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  if not rows:
    raise ValueError(f'{path}: no rows (a header line and at least one run are needed).')
  return {name: _column([row[name] for row in rows]) for name in rows[0]}


def write_csv(path, rows: list[dict], columns: list[str]) -> None:
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=columns, extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)


def num_rows(table: Table) -> int:
  return len(next(iter(table.values())))


def subset(table: Table, mask) -> Table:
  return {name: values[mask] for name, values in table.items()}


def require_positive(table: Table, columns, source='runs') -> None:
  """Every named column exists, is numeric, finite and > 0, or a ValueError says which is not."""
  for name in columns:
    if name not in table:
      raise ValueError(
          f'{source}: missing column {name!r} (columns present: {", ".join(table)}).')
    values = table[name]
    if values.dtype.kind not in 'fi':
      raise ValueError(f'{source}: column {name!r} is not numeric (e.g. {values[0]!r}).')
    bad = ~np.isfinite(values) | (values <= 0)
    if bad.any():
      row = int(np.argmax(bad))
      raise ValueError(
          f'{source}: column {name!r} needs finite positive values; row {row + 1} has '
          f'{values[row]!r} ({int(bad.sum())} bad rows in all).')


def require_rows(table: Table, minimum: int, what: str) -> None:
  if num_rows(table) < minimum:
    raise ValueError(f'{what} needs at least {minimum} runs; got {num_rows(table)}.')


def with_compute(table: Table) -> Table:
  """The table with a C column: kept if measured, else the 6ND estimate."""
  if 'C' in table:
    return table
  return {**table, 'C': FLOPS_PER_PARAM_TOKEN * table['N'] * table['D']}


def checked_runs(table: Table, source='runs') -> Table:
  """The table after checking N, D and loss, with a checked C column (measured, or 6ND)."""
  require_positive(table, ('N', 'D', 'loss'), source)
  table = with_compute(table)
  require_positive(table, ('C',), source)
  return table


def flops_per_param_token(table: Table) -> float:
  """Median C / (N D): how this table's FLOP counts relate to 6ND, for turning C into N and D."""
  return float(np.median(table['C'] / (table['N'] * table['D'])))


def _column(cells: list[str]) -> np.ndarray:
  try:
    return np.array([float(cell) if cell.strip() else math.nan for cell in cells])
  except ValueError:
    return np.array(cells, dtype=str)
