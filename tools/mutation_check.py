"""Do the tests catch these small changes to the core? An on-demand check, not CI.

  .venv/bin/python tools/mutation_check.py                  # every mutation
  .venv/bin/python tools/mutation_check.py --list           # what each one is
  .venv/bin/python tools/mutation_check.py --only grad_relu_swap
  .venv/bin/python tools/mutation_check.py --root /tmp/copy # a copy of the checkout

First the named tests run on the unchanged code (they must pass, or "caught"
would mean nothing). Then, for each mutation: its file's bytes are kept, the
snippet replaced, the mutation's tests run with pytest (this interpreter, the
checkout as working directory), and the file written back byte for byte in a
`finally`, on Ctrl-C and SIGTERM too. A mutation is caught when pytest reports
failed tests (exit status 1). A snippet that is no longer in its file (the
code changed) is reported as such, never as caught. The table at the end says
mutation -> caught / NOT CAUGHT; the exit status is 1 unless every one is caught.

A few minutes on a CPU (one pytest run per mutation, plus the first). While a
mutation is applied, anything else importing the checkout sees it: where others
share the working tree, point --root at a copy.
"""

import argparse
import dataclasses
import importlib.util
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from typing import List, Sequence, Tuple

ROOT = pathlib.Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Mutation:
  name: str
  path: str  # Relative to the checkout.
  original: str  # Must occur exactly once in the file.
  replacement: str
  tests: Tuple[str, ...]  # pytest node ids that must fail.
  what: str


MUTATIONS = (
  Mutation(
    'grad_relu_swap',
    'layermatch_jax/algorithms/grad_relu.py',
    'return scale * x + (1.0 - scale) * jax.lax.stop_gradient(x)',
    'return (1.0 - scale) * x + scale * jax.lax.stop_gradient(x)',
    (
      'tests/test_train_step.py::test_grad_relu_matches_separate_gradients[0.25]',
      'tests/test_head_grad_rule.py::'
      'test_scale_gradient_keeps_the_value_and_passes_that_share_of_the_gradient',
    ),
    'Grad-ReLU passes 1 - alpha of the head gradient instead of alpha',
  ),
  Mutation(
    'fairness_unmasked_head',
    'layermatch_jax/train_step.py',
    'policies.freematch_fairness(sel.state, jax.nn.softmax(logits_s),',
    "policies.freematch_fairness(sel.state, jax.nn.softmax(head(params['head'], z_s)),",
    (
      'tests/test_train_step.py::'
      'test_freematch_fairness_moves_the_backbone_but_not_a_grad_relu_head',
    ),
    "FreeMatch's fairness term from the unmasked head: it moves the head at alpha = 0",
  ),
  Mutation(
    'softmatch_weights_rounded',
    'layermatch_jax/train_step.py',
    '    mask * optax.softmax_cross_entropy_with_integer_labels(logits_s, pseudo))',
    '    jnp.round(mask) * optax.softmax_cross_entropy_with_integer_labels(logits_s, pseudo))',
    (
      'tests/test_train_step.py::test_softmatch_weights_enter_losses_and_centres_as_given',
    ),
    "SoftMatch's soft weights rounded to 0/1 inside L_u",
  ),
  Mutation(
    'confident_acc_unmasked',
    'layermatch_jax/train_step.py',
    # Two lines: the numerator and the denominator both lose the mask.
    '_ratio((correct * mask).sum(),\n'
    + ' ' * 47
    + '(known * mask).sum(), axis)',
    '_ratio(correct.sum(),\n' + ' ' * 47 + 'known.sum(), axis)',
    ('tests/test_train_step.py::test_step_metrics_and_state_bookkeeping',),
    'confident_pseudo_label_acc over all pseudo-labels, not the confident ones',
  ),
  Mutation(
    'cluster_weights_rounded',
    'layermatch_jax/algorithms/avg_clustering.py',
    'weight = mask * valid[pseudo_labels] * (jnp.sum(valid) >= 2)',
    'weight = jnp.round(mask) * valid[pseudo_labels] * (jnp.sum(valid) >= 2)',
    (
      'tests/test_train_step.py::test_softmatch_weights_enter_losses_and_centres_as_given',
    ),
    "SoftMatch's soft weights rounded to 0/1 inside L_c",
  ),
  Mutation(
    'centre_mean_clipped',
    'layermatch_jax/algorithms/avg_clustering.py',
    'means = sums / jnp.where(present, counts, 1.0)[:, None]',
    'means = sums / jnp.maximum(counts, 1.0)[:, None]',
    (
      'tests/test_train_step.py::test_update_centers_takes_the_weighted_mean_of_soft_weights',
    ),
    'a class mean divided by max(weight sum, 1): short for soft weights (a bug fixed)',
  ),
  Mutation(
    'head_init_uniform',
    'layermatch_jax/models/__init__.py',
    'kernel_init=nn.initializers.xavier_normal()',
    'kernel_init=nn.initializers.xavier_uniform()',
    ('tests/test_models.py::test_head_initialisation_is_xavier_normal',),
    'the head initialised uniform with the same std',
  ),
  Mutation(
    'luma_rec709',
    'layermatch_jax/augment/ops.py',
    '_LUMA = (0.299, 0.587, 0.114)',
    '_LUMA = (0.2126, 0.7152, 0.0722)',
    ('tests/test_augment.py::test_grayscale_is_itu_601_luma',),
    "grey from Rec. 709's luma, not PIL's ITU-R 601-2",
  ),
)

CAUGHT, NOT_CAUGHT = 'caught', 'NOT CAUGHT'


class _Terminated(Exception):
  """SIGTERM, raised in the main thread so that `finally` restores the file."""


def _on_sigterm(signum, frame):
  del signum, frame
  raise _Terminated()


def _pytest(
  root: pathlib.Path, node_ids: Sequence[str], log: pathlib.Path
) -> Tuple[int, str]:
  """Runs pytest on `node_ids`; returns its exit status and its summary line."""
  env = dict(
    os.environ, PYTHONDONTWRITEBYTECODE='1'
  )  # No bytecode of a mutant left behind.
  env.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
  env.setdefault('JAX_PLATFORMS', 'cpu')
  with open(log, 'w') as f:
    rc = subprocess.run(
      [
        sys.executable,
        '-m',
        'pytest',
        '-q',
        '-x',
        '-p',
        'no:cacheprovider',
        *node_ids,
      ],
      cwd=root,
      env=env,
      stdout=f,
      stderr=subprocess.STDOUT,
      check=False,
    ).returncode
  lines = [
    line.strip() for line in log.read_text().splitlines() if line.strip()
  ]
  return rc, (lines[-1] if lines else '(no output)').strip('= ')


def _forget_bytecode(path: pathlib.Path):
  """Removes `path`'s cached bytecode: a same-size mutant saved within the second
  of the cached source's mtime would otherwise run the cached original."""
  pathlib.Path(importlib.util.cache_from_source(str(path))).unlink(
    missing_ok=True
  )


def _restore(
  path: pathlib.Path, original: bytes, mutated: bytes, m: Mutation
) -> str:
  """Puts the original bytes back; '' when done, else what went wrong."""
  current = path.read_bytes() if path.exists() else None
  if current == original:
    return ''
  if current == mutated:
    path.write_bytes(original)
    _forget_bytecode(path)
    return (
      '' if path.read_bytes() == original else f'{path}: restore did not stick'
    )
  # Someone saved the file meanwhile: undo the mutation in their version.
  new, old = m.replacement.encode(), m.original.encode()
  if current is not None and current.count(new) == 1:
    path.write_bytes(current.replace(new, old))
    _forget_bytecode(path)
    return f'{path} changed while mutated: the mutation was undone in the new version'
  return (
    f'{path} changed while mutated and the mutant snippet is not in it: check it by '
    f'hand for {m.replacement!r}'
  )


def check(
  m: Mutation, root: pathlib.Path, log: pathlib.Path
) -> Tuple[str, str]:
  """Applies `m`, runs its tests, restores the file: (result, pytest's summary)."""
  path = root / m.path
  original = path.read_bytes()
  count = original.count(m.original.encode())
  if count != 1:
    return (
      f'SNIPPET FOUND {count} TIMES'
      if count
      else 'SNIPPET NOT FOUND (code changed?)'
    ), '-'
  mutated = original.replace(m.original.encode(), m.replacement.encode())
  try:
    path.write_bytes(mutated)
    _forget_bytecode(path)
    rc, summary = _pytest(root, m.tests, log)
  finally:
    problem = _restore(path, original, mutated, m)
    if problem:
      print(f'WARNING: {problem}', file=sys.stderr)
  if problem:
    return 'FILE CHANGED DURING THE RUN (see the warning)', summary
  if rc == 1:
    return CAUGHT, summary
  if rc == 0:
    return NOT_CAUGHT, summary
  return f'ERROR (pytest exit {rc}, see {log})', summary


def _table(rows: List[Tuple[str, str, str]]) -> str:
  header = ('mutation', 'result', 'pytest')
  widths = [max(len(r[i]) for r in [header, *rows]) for i in range(2)]
  lines = [f'{header[0]:<{widths[0]}}  {header[1]:<{widths[1]}}  {header[2]}']
  lines += [f'{a:<{widths[0]}}  {b:<{widths[1]}}  {c}' for a, b, c in rows]
  return '\n'.join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    '--list', action='store_true', help='print the mutations and exit'
  )
  parser.add_argument(
    '--only',
    action='append',
    metavar='NAME',
    help='run only this mutation (repeatable)',
  )
  parser.add_argument(
    '--root',
    type=pathlib.Path,
    default=ROOT,
    help='the checkout to mutate and test (default: this one)',
  )
  parser.add_argument(
    '--no-baseline',
    action='store_true',
    help='skip the run of the tests on the unchanged code',
  )
  args = parser.parse_args(argv)

  if args.list:
    for m in MUTATIONS:
      print(
        f'{m.name}: {m.what}\n  {m.path}\n  - {m.original!r}\n  + {m.replacement!r}'
      )
      print(''.join(f'  test {t}\n' for t in m.tests))
    return 0
  by_name = {m.name: m for m in MUTATIONS}
  unknown = sorted(set(args.only or ()) - set(by_name))
  if unknown:
    parser.error(f'unknown mutation(s) {unknown}: use one of {sorted(by_name)}')
  chosen = [by_name[n] for n in args.only] if args.only else list(MUTATIONS)
  root = args.root.resolve()

  signal.signal(signal.SIGTERM, _on_sigterm)
  logs = pathlib.Path(tempfile.mkdtemp(prefix='mutation_check_'))
  if not args.no_baseline:
    tests = list(dict.fromkeys(t for m in chosen for t in m.tests))
    start = time.time()
    rc, summary = _pytest(root, tests, logs / 'baseline.log')
    print(
      f'baseline ({len(tests)} node ids, unchanged code): {summary} '
      f'[{time.time() - start:.0f} s]'
    )
    if rc != 0:
      print(
        f'The tests fail without a mutation; see {logs / "baseline.log"}.',
        file=sys.stderr,
      )
      return 1
  rows = []
  for m in chosen:
    start = time.time()
    try:
      result, summary = check(m, root, logs / f'{m.name}.log')
    except (KeyboardInterrupt, _Terminated):
      print(
        f'\nInterrupted during {m.name}; {m.path} was restored.',
        file=sys.stderr,
      )
      return 130
    rows.append((m.name, result, f'{summary} [{time.time() - start:.0f} s]'))
    print(f'{m.name}: {result}', flush=True)
  print()
  print(_table(rows))
  print(f'\nlogs: {logs}')
  return 0 if all(result == CAUGHT for _, result, _ in rows) else 1


if __name__ == '__main__':
  sys.exit(main())
