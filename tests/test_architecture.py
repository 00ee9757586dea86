"""The package is layered by stage: no import circles and no import from a lower stage up.

Stages, lowest first (a module may import from its own stage and the ones below):
  core < config < models, data, objectives < checkpoint, metrics < compress < train
  < inference < scaling < hparams < entry points (the root modules and every `__main__`).
A deferred import (inside a function) counts like any other, and is allowed only where
TensorFlow's import time is the reason, said in a comment on its line or the two lines above.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'jaxscale'
STAGES = (('core',), ('config',), ('models', 'data', 'objectives'), ('checkpoint', 'metrics'),
          ('compress',), ('train',), ('inference',), ('scaling',), ('hparams',))
ENTRY = len(STAGES)
MAX_ROOT_MODULES = 8


def module_files(package: pathlib.Path) -> dict[str, pathlib.Path]:
  files = {}
  for path in package.rglob('*.py'):
    parts = path.relative_to(package.parent).with_suffix('').parts
    if parts[-1] == '__init__':
      parts = parts[:-1]
    files['.'.join(parts)] = path
  return files


def stage_of(module: str) -> int:
  parts = module.split('.')
  if len(parts) <= 2 and not (len(parts) == 2 and any(parts[1] in s for s in STAGES)):
    return ENTRY  # jaxscale itself and its root modules.
  if parts[-1] == '__main__':
    return ENTRY
  return next(i for i, names in enumerate(STAGES) if parts[1] in names)


def imports_of(module: str, path: pathlib.Path, modules) -> list[tuple[str, int, bool, str]]:
  """(imported module, line, deferred, comment text) for each jaxscale import."""
  source = path.read_text()
  lines = source.splitlines()
  tree = ast.parse(source)
  top_level = {id(node) for node in tree.body}
  package = module if path.name == '__init__.py' else module.rpartition('.')[0]
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        base = '.'.join(package.split('.')[:len(package.split('.')) - node.level + 1]
                        + ([base] if base else []))
      names = [f'{base}.{alias.name}' if f'{base}.{alias.name}' in modules else base
               for alias in node.names]
    else:
      continue
    # A module-level `if`/`try` body is still top level; only function bodies defer.
    deferred = id(node) not in top_level and _inside_function(tree, node)
    context = ' '.join(lines[max(0, node.lineno - 3):node.end_lineno])
    for name in names:
      while name and name not in modules:
        name = name.rpartition('.')[0]
      if name.startswith('jaxscale') and name != module and name != 'jaxscale':
        found.append((name, node.lineno, deferred, context))
  return found


def _inside_function(tree, target) -> bool:
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
      if any(child is target for child in ast.walk(node)):
        return True
  return False


def import_graph(package: pathlib.Path):
  modules = module_files(package)
  return modules, {m: imports_of(m, p, modules) for m, p in modules.items()}


def upward_imports(graph) -> list[str]:
  return [f'{m}:{line} imports {target} (stage {stage_of(target)} > {stage_of(m)})'
          for m, found in graph.items() for target, line, _, _ in found
          if stage_of(target) > stage_of(m)]


def unexplained_deferred_imports(graph) -> list[str]:
  return [f'{m}:{line} imports {target} inside a function without saying TensorFlow is why'
          for m, found in graph.items() for target, line, deferred, context in found
          if deferred and 'TensorFlow' not in context]


def circles(graph) -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan)."""
  edges = {m: sorted({t for t, *_ in found}) for m, found in graph.items()}
  index, low, stack, on_stack, result = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in edges.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        result.append(sorted(component))

  for v in sorted(edges):
    if v not in index:
      visit(v)
  return result


@pytest.fixture(scope='module')
def graph():
  return import_graph(PACKAGE)[1]


def test_no_import_circles(graph):
  assert circles(graph) == []


def test_no_upward_imports(graph):
  assert upward_imports(graph) == []


def test_deferred_imports_are_only_for_tensorflow(graph):
  assert unexplained_deferred_imports(graph) == []


def test_core_imports_nothing_else_of_jaxscale(graph):
  assert [(m, t) for m, found in graph.items() if m.startswith('jaxscale.core')
          for t, *_ in found if not t.startswith('jaxscale.core')] == []


def test_the_root_keeps_only_entry_points():
  root_modules = sorted(p.stem for p in PACKAGE.glob('*.py'))
  assert len(root_modules) <= MAX_ROOT_MODULES, root_modules
  assert 'main' in root_modules


def test_every_package_has_a_stage():
  packages = sorted(p.name for p in PACKAGE.iterdir() if (p / '__init__.py').exists())
  assert [p for p in packages if not any(p in s for s in STAGES)] == []


def _write(root: pathlib.Path, files: dict[str, str]):
  for name, text in files.items():
    path = root / 'jaxscale' / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_checks_catch_an_upward_import_a_circle_and_an_unexplained_deferred_import(tmp_path):
  # A layered toy package, then one bad import of each kind added to it.
  _write(tmp_path, {
      '__init__.py': '', 'core/__init__.py': '', 'core/paths.py': 'X = 1\n',
      'models/__init__.py': '', 'train/__init__.py': '',
      'models/layer.py': 'from jaxscale.core import paths\n',
      'train/loop.py': 'from jaxscale.models import layer\n'
                       'def f():\n  from jaxscale.data import text  # TensorFlow loads here.\n',
      'data/__init__.py': '', 'data/text.py': 'import numpy\n',
  })
  _, good = import_graph(tmp_path / 'jaxscale')
  assert (circles(good), upward_imports(good), unexplained_deferred_imports(good)) == ([], [], [])
  _write(tmp_path, {'core/paths.py': 'from jaxscale.train import loop\n',
                    'train/loop.py': 'from jaxscale.models import layer\n'
                                     'def f():\n  from jaxscale.data import text\n'})
  _, bad = import_graph(tmp_path / 'jaxscale')
  assert circles(bad) == [['jaxscale.core.paths', 'jaxscale.models.layer', 'jaxscale.train.loop']]
  assert upward_imports(bad) == ['jaxscale.core.paths:1 imports jaxscale.train.loop (stage 5 > 0)']
  assert unexplained_deferred_imports(bad) == [
      'jaxscale.train.loop:3 imports jaxscale.data.text inside a function without saying '
      'TensorFlow is why']
