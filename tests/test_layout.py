"""The module layout: the README's code map lists every module, imports go down it.

The code map (README.md, "Code map") lists the package's modules from the top
(the command line) to the bottom (leaves such as `parallel.py`); a module may
import only modules listed below it, so no import cycle can form.
"""

import ast
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = 'layermatch_jax'


def code_map():
  """Module paths in the README's code map, top first."""
  with open(os.path.join(ROOT, 'README.md')) as f:
    text = f.read()
  section = text.split('\n## Code map\n', 1)[1].split('\n## ', 1)[0]
  return re.findall(rf'^- `({PACKAGE}/[\w/]+\.py)`', section, flags=re.M)


def package_modules():
  out = []
  for parent, _, files in os.walk(os.path.join(ROOT, PACKAGE)):
    out += [
      os.path.relpath(os.path.join(parent, f), ROOT)
      for f in files
      if f.endswith('.py')
    ]
  return sorted(out)


def _path_of(dotted: str):
  """layermatch_jax.a.b -> its file (module or package __init__), or None."""
  base = os.path.join(*dotted.split('.'))
  for path in (base + '.py', os.path.join(base, '__init__.py')):
    if os.path.exists(os.path.join(ROOT, path)):
      return path
  return None


def imports_of(path: str) -> set:
  """The package's modules `path` imports, at any level (function bodies too)."""
  with open(os.path.join(ROOT, path)) as f:
    tree = ast.parse(f.read())
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      # `from a.b import c`: c is a module (a/b/c.py) or a name in a.b.
      names = [
        f'{node.module}.{a.name}'
        if _path_of(f'{node.module}.{a.name}')
        else node.module
        for a in node.names
      ]
    else:
      continue
    found |= {_path_of(n) for n in names if n.split('.')[0] == PACKAGE}
  return {p for p in found if p is not None and p != path}


def test_code_map_lists_every_module_once():
  listed = code_map()
  assert len(listed) == len(set(listed)), [
    p for p in listed if listed.count(p) > 1
  ]
  assert sorted(listed) == package_modules(), (
    f'missing from the code map: {sorted(set(package_modules()) - set(listed))}; '
    f'listed but absent: {sorted(set(listed) - set(package_modules()))}'
  )


def test_imports_go_down_the_code_map():
  order = {path: i for i, path in enumerate(code_map())}
  upward = [
    f'{path} imports {target}'
    for path in order
    for target in sorted(imports_of(path))
    if order[target] <= order[path]
  ]
  assert not upward, upward


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
  """The checker itself: a module importing one above it is reported."""
  fake = tmp_path / PACKAGE
  fake.mkdir()
  (fake / '__init__.py').write_text('')
  (fake / 'top.py').write_text('from layermatch_jax import bottom\n')
  (fake / 'bottom.py').write_text(
    'def f():\n  from layermatch_jax import top\n'
  )
  monkeypatch.setattr(sys.modules[__name__], 'ROOT', str(tmp_path))
  assert imports_of(f'{PACKAGE}/bottom.py') == {f'{PACKAGE}/top.py'}
  assert imports_of(f'{PACKAGE}/top.py') == {f'{PACKAGE}/bottom.py'}


def test_every_module_imports_in_a_fresh_interpreter():
  """Bottom first, as a leaf is used alone (e.g. by a decoding worker process).

  Modules that define absl flags (main.py, commands/benchmark.py) each get an
  interpreter of their own: two of them in one process define --config twice.
  """
  names = [
    p[:-3].replace('/', '.').removesuffix('.__init__')
    for p in reversed(code_map())
  ]
  with_flags = [
    n
    for n in names
    if 'DEFINE_' in open(os.path.join(ROOT, _path_of(n))).read()
  ]
  groups = [[n for n in names if n not in with_flags]] + [
    [n] for n in with_flags
  ]
  for group in groups:
    code = (
      'import importlib\nfor n in %r:\n  importlib.import_module(n)\n' % group
    )
    proc = subprocess.run(
      [sys.executable, '-c', code],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
      env=dict(os.environ, JAX_PLATFORMS='cpu'),
    )
    assert proc.returncode == 0, (group, proc.stderr[-3000:])
