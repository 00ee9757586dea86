"""The offline lm-eval tasks' data, built deterministically from the held-out split of the embedded
python_stdlib corpus (files whose path hash puts them in validation; training never sees them):

- `stdlib_next_line.jsonl`: which of four lines really follows a context of whole lines from a
  held-out file; the three others are lines of other held-out files.
- `stdlib_files.jsonl`: the beginnings of held-out files, whole lines up to a size, for rolling
  perplexity.

The JSONL files are committed beside the task YAMLs (`lm_eval_tasks/`), built by
`python -c 'from jaxscale.inference import offline_tasks; offline_tasks.write()'`; another Python
version's standard library builds different files (`source` records which one).
"""

import json
import pathlib
import random

from jaxscale.data.builders import python_stdlib

TASKS_DIR = pathlib.Path(__file__).parent / 'lm_eval_tasks'
NUM_QUESTIONS = 200
CONTEXT_BYTES = 192
NUM_FILES = 32
FILE_BYTES = 3000
SEED = 0


def held_out_files() -> list[tuple[str, str]]:
  """(relative path, text) of the held-out standard-library files, sorted by path."""
  root = python_stdlib.stdlib_root()
  files = []
  for path in python_stdlib.source_files(root):
    relative = path.relative_to(root).as_posix()
    if python_stdlib.is_validation(relative):
      try:
        files.append((relative, path.read_text('utf-8')))
      except (UnicodeDecodeError, OSError):
        continue
  return files


def _candidate_line(line: str) -> bool:
  stripped = line.strip()
  return 12 <= len(stripped) and len(line) <= 80 and line.isascii() and not stripped.startswith('#')


def next_line_questions(files, count: int = NUM_QUESTIONS, seed: int = SEED) -> list[dict]:
  """Multiple-choice rows: context (whole lines, at most CONTEXT_BYTES), four choices, label."""
  rng = random.Random(seed)
  lines_of = {path: text.split('\n') for path, text in files}
  pool = [(path, line) for path, lines in lines_of.items() for line in lines
          if _candidate_line(line)]
  slots = [(path, i) for path, lines in lines_of.items() for i in range(3, len(lines))
           if _candidate_line(lines[i])]
  questions = []
  for path, i in rng.sample(slots, len(slots)):
    if len(questions) == count:
      break
    lines = lines_of[path]
    context = []
    for line in reversed(lines[:i]):
      if len('\n'.join([line, *context])) + 1 > CONTEXT_BYTES:
        break
      context.insert(0, line)
    if len(context) < 2:
      continue
    answer = lines[i]
    distractors = []
    while len(distractors) < 3:
      other_path, other = rng.choice(pool)
      if other_path != path and other not in distractors and other.strip() != answer.strip():
        distractors.append(other)
    label = rng.randrange(4)
    choices = distractors[:label] + [answer] + distractors[label:]
    questions.append({'source': path, 'context': '\n'.join(context) + '\n',
                      'choices': [choice + '\n' for choice in choices], 'label': label})
  return questions


def file_beginnings(files, count: int = NUM_FILES, seed: int = SEED) -> list[dict]:
  """Rolling-perplexity rows: the first whole lines (at most FILE_BYTES) of held-out files."""
  rng = random.Random(seed)
  rows = []
  for path, text in rng.sample(files, len(files)):
    if len(rows) == count:
      break
    if not text.isascii() or len(text) < FILE_BYTES // 2:
      continue
    cut = text[:FILE_BYTES]
    rows.append({'source': path, 'text': cut[:cut.rfind('\n') + 1]})
  return rows


def write(directory=TASKS_DIR) -> dict[str, int]:
  """Writes both JSONL files into `directory`; returns their row counts."""
  files = held_out_files()
  directory = pathlib.Path(directory)
  counts = {}
  for name, rows in (('stdlib_next_line.jsonl', next_line_questions(files)),
                     ('stdlib_files.jsonl', file_beginnings(files))):
    with open(directory / name, 'w') as f:
      for row in rows:
        f.write(json.dumps(row, sort_keys=True) + '\n')
    counts[name] = len(rows)
  return counts
