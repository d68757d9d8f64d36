"""Algorithm presets: named settings of the knobs of one train step.

A knob left as None in the config takes the preset's value; a knob set
explicitly wins, so e.g. FixMatch + Avg-Clustering is
`algorithm=fixmatch, layermatch.cluster_weight=1.0`, and LayerMatch on top of
FlexMatch is either `algorithm=layermatch, pseudo_label.policy=flexmatch` or
`algorithm=flexmatch, layermatch.head_grad_scale=0, layermatch.cluster_weight=1`.
"""

from layermatch_jax.algorithms import grad_relu, policies

_PSEUDO_LABEL = dict(
  unsup_weight=1.0,
  head_grad_scale=1.0,
  cluster_weight=0.0,
  head_grad_rule='static',
)

PRESETS = {
  # Labeled loss only: the unlabeled batch is not even forwarded.
  'supervised': dict(
    unsup_weight=0.0,
    head_grad_scale=1.0,
    cluster_weight=0.0,
    head_grad_rule='static',
    policy='fixed',
  ),
  # Pseudo-labels train every layer; no clustering.
  'fixmatch': dict(_PSEUDO_LABEL, policy='fixed'),
  # Grad-ReLU (no pseudo-label gradient into the head) + Avg-Clustering.
  'layermatch': dict(
    unsup_weight=1.0,
    head_grad_scale=0.0,
    cluster_weight=1.0,
    head_grad_rule='static',
    policy='fixed',
  ),
  # LayerMatch whose head does learn from a pseudo-label where the head and the
  # nearest Avg-Clustering centre agree on it (grad_relu.HEAD_GRAD_RULES).
  'layermatch_adaptive': dict(
    unsup_weight=1.0,
    head_grad_scale=0.0,
    cluster_weight=1.0,
    head_grad_rule='consensus',
    policy='fixed',
  ),
  # LayerMatch whose head's pseudo-label gradient rises from 0 to 1 over the
  # first layermatch.head_grad_warmup_fraction of training: the schedule baseline.
  'layermatch_warmup': dict(
    unsup_weight=1.0,
    head_grad_scale=0.0,
    cluster_weight=1.0,
    head_grad_rule='warmup',
    policy='fixed',
  ),
  # The other pseudo-label policies, plain (every layer, no clustering).
  'flexmatch': dict(_PSEUDO_LABEL, policy='flexmatch'),
  'freematch': dict(_PSEUDO_LABEL, policy='freematch'),
  'softmatch': dict(_PSEUDO_LABEL, policy='softmatch'),
}


def _preset(config) -> dict:
  if config.algorithm not in PRESETS:
    raise ValueError(
      f'algorithm={config.algorithm!r} is not one of {sorted(PRESETS)}'
    )
  return PRESETS[config.algorithm]


def resolve(config) -> dict:
  """Returns the effective {unsup_weight, head_grad_scale, head_bias_grad_scale,
  cluster_weight, head_grad_rule} for `config`, raising ValueError on an unknown
  algorithm or a rule that cannot work with the other knobs."""
  preset = _preset(config)

  def pick(value, default):
    return float(default if value is None else value)

  knobs = dict(
    unsup_weight=pick(config.pseudo_label.unsup_weight, preset['unsup_weight']),
    head_grad_scale=pick(
      config.layermatch.head_grad_scale, preset['head_grad_scale']
    ),
    cluster_weight=pick(
      config.layermatch.cluster_weight, preset['cluster_weight']
    ),
  )
  knobs['head_bias_grad_scale'] = pick(
    config.layermatch.head_bias_grad_scale, knobs['head_grad_scale']
  )
  rule = config.layermatch.get('head_grad_rule')
  knobs['head_grad_rule'] = preset['head_grad_rule'] if rule is None else rule
  if knobs['head_grad_rule'] not in grad_relu.HEAD_GRAD_RULES:
    raise ValueError(
      f'layermatch.head_grad_rule={knobs["head_grad_rule"]!r} is not one of '
      f'{list(grad_relu.HEAD_GRAD_RULES)}'
    )
  if knobs['head_grad_rule'] == 'consensus' and not (
    knobs['cluster_weight'] > 0 and knobs['unsup_weight'] > 0
  ):
    raise ValueError(
      "layermatch.head_grad_rule='consensus' needs Avg-Clustering's centres "
      'and a pseudo-label loss (layermatch.cluster_weight > 0 and '
      'pseudo_label.unsup_weight > 0)'
    )
  return knobs


def resolve_policy(config) -> str:
  """The pseudo-label policy: `pseudo_label.policy` if set, else the preset's."""
  preset = _preset(config)
  name = config.pseudo_label.get('policy')
  name = preset['policy'] if name is None else name
  if name not in policies.POLICIES:
    raise ValueError(
      f'pseudo_label.policy={name!r} is not one of {sorted(policies.POLICIES)}'
    )
  return name
