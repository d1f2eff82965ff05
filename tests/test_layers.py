"""The packages import only downward: data < configuration < engine < backends < parity."""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
# Each package and the project packages it may import (besides itself).
ALLOWED = {
    'iemocap': set(),
    'flags': {'iemocap'},
    'engine': {'iemocap', 'flags'},
    'lmf_jax': {'iemocap', 'flags', 'engine'},
    'lmf_torch_npu': {'iemocap', 'flags', 'engine'},
    'parity': {'iemocap', 'flags', 'engine', 'lmf_jax', 'lmf_torch_npu'},
}


def imports(path):
  """(line, module) of every import statement in a file, at any depth."""
  tree = ast.parse(open(path, encoding='utf-8').read())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      yield node.lineno, node.module


def modules(package):
  directory = os.path.join(ROOT, package)
  return sorted(os.path.join(directory, name) for name in os.listdir(directory)
                if name.endswith('.py'))


@pytest.mark.parametrize('package', sorted(ALLOWED))
def test_a_package_imports_only_the_layers_below_it(package):
  upward = []
  for path in modules(package):
    for line, module in imports(path):
      top = module.split('.')[0]
      if top in ALLOWED and top != package and top not in ALLOWED[package]:
        upward.append(f'{os.path.relpath(path, ROOT)}:{line} imports {module}')
  assert not upward


@pytest.mark.parametrize('package', sorted(ALLOWED))
def test_modules_of_a_package_import_each_other_without_cycles(package):
  names = {os.path.basename(p)[:-3]: p for p in modules(package)}
  edges = {name: {module.split('.')[1] for _, module in imports(path)
                  if module.startswith(package + '.') and module.split('.')[1] in names}
           for name, path in names.items()}
  for name, path in names.items():  # `from package import module` names the module too
    tree = ast.parse(open(path, encoding='utf-8').read())
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module == package:
        edges[name] |= {a.name for a in node.names if a.name in names}
  state = {}

  def visit(node, trail):
    if state.get(node) == 'done':
      return
    assert state.get(node) != 'open', f'import cycle: {" -> ".join(trail + [node])}'
    state[node] = 'open'
    for other in edges[node] - {node}:
      visit(other, trail + [node])
    state[node] = 'done'

  for name in names:
    visit(name, [])
