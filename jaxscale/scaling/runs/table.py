"""Run tables: CSV in and out, and the checks every fit makes before it trusts a column.

A table is a plain dict of column name -> 1-D numpy array (float where every cell parses as a
number, str otherwise). Fits fail loudly here, naming the column and row, rather than fitting
garbage: a missing column, an empty, NaN or non-numeric cell, or a non-positive size, token
count, FLOP count or loss. No row is ever dropped silently.

Other people's tables name their columns their own way: `map_columns` renames them to N, D, C
and loss from an explicit `--columns N=params,D=tokens,C=flops,loss=eval/loss` or, failing
that, from the common names in `ALIASES`.
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
  for index, row in enumerate(rows):
    if None in row:  # csv puts cells beyond the header's under the key None.
      raise ValueError(f'{path}: row {index + 1} (file line {index + 2}) has more cells than the '
                       f'header has columns ({len(rows[0]) - (None in rows[0])}).')
  return {name: _column([row[name] for row in rows]) for name in rows[0]}


# Common names of each column the fits read, tried in order (case-insensitive) when a table has
# no column of the canonical name and no explicit mapping names one.
ALIASES = {
    'N': ('N', 'params', 'n_params', 'num_params', 'parameters', 'num_parameters', 'model_params',
          'model_size', 'nparams'),
    'D': ('D', 'tokens', 'tokens_seen', 'n_tokens', 'num_tokens', 'train_tokens',
          'training_tokens', 'data_size'),
    'C': ('C', 'flops', 'flops_seen', 'compute', 'train_flops', 'training_flops', 'total_flops'),
    'loss': ('loss', 'eval_loss', 'eval/loss', 'val_loss', 'val/loss', 'validation_loss',
             'valid_loss', 'final_loss', 'test_loss'),
}


def parse_columns(text) -> dict[str, str]:
  """'N=params,D=tokens,loss=eval/loss' -> {'N': 'params', 'D': 'tokens', 'loss': 'eval/loss'}."""
  mapping = {}
  for item in (text or '').split(','):
    if not item.strip():
      continue
    name, sep, source = item.partition('=')
    name, source = name.strip(), source.strip()
    if not sep or not source or name not in ALIASES:
      raise ValueError(f'--columns expects NAME=COLUMN pairs with NAME one of '
                       f'{", ".join(ALIASES)} (e.g. N=params,loss=eval/loss); got {item!r}.')
    mapping[name] = source
  return mapping


def map_columns(table: Table, explicit=None, source='runs') -> tuple[Table, dict[str, str]]:
  """(table with N, D, C, loss renamed from their columns, {name: column it came from}).

  `explicit` ({name: column}) wins; otherwise a column already named N, D, C or loss is kept,
  else the first of its `ALIASES` present (case-insensitive). Unmapped names are left out of
  the mapping (the fits then say which column is missing)."""
  explicit = dict(explicit or {})
  lower = {name.lower(): name for name in table}
  mapping = {}
  for name, aliases in ALIASES.items():
    if name in explicit:
      if explicit[name] not in table:
        raise ValueError(f'{source}: --columns maps {name} to {explicit[name]!r}, which is not a '
                         f'column (columns present: {", ".join(table)}).')
      mapping[name] = explicit[name]
      continue
    if name in table:
      mapping[name] = name
      continue
    found = next((lower[alias.lower()] for alias in aliases if alias.lower() in lower), None)
    if found is not None and found not in mapping.values():
      mapping[name] = found
  renamed = {column: values for column, values in table.items()
             if column not in mapping.values() and column not in mapping}
  renamed.update({name: table[column] for name, column in mapping.items()})
  return renamed, mapping


def describe_mapping(mapping: dict[str, str]) -> str:
  """'N=params, D=tokens, loss=loss' for the stderr line that says what was read as what."""
  return ', '.join(f'{name}={column}' for name, column in mapping.items())


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
      row = next((i for i, cell in enumerate(values) if not _is_number(cell)), 0)
      raise ValueError(f'{source}: column {name!r} is not numeric: row {row + 1} (file line '
                       f'{row + 2}) has {str(values[row])!r}.')
    bad = ~np.isfinite(values) | (values <= 0)
    if bad.any():
      row = int(np.argmax(bad))
      what = ('an empty or NaN cell' if np.isnan(values[row]) else
              f'{values[row]!r}, not finite' if not np.isfinite(values[row]) else
              f'{values[row]!r}, not positive')
      raise ValueError(
          f'{source}: column {name!r} needs finite positive values; row {row + 1} (file line '
          f'{row + 2}) has {what} ({int(bad.sum())} bad rows in all; none is dropped).')


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


def _is_number(cell) -> bool:
  try:
    float(cell)
  except (TypeError, ValueError):
    return False
  return True


def _column(cells: list[str]) -> np.ndarray:
  try:
    # A short row leaves its missing cells None: read as empty (so refused where a fit needs it).
    return np.array([float(cell) if cell and cell.strip() else math.nan for cell in cells])
  except ValueError:
    return np.array(['' if cell is None else cell for cell in cells], dtype=str)
