"""Algorithm presets: named settings of the knobs of one train step.

A knob left as None in the config takes the preset's value; a knob set
explicitly wins, so e.g. FixMatch + Avg-Clustering is
`algorithm=fixmatch, layermatch.cluster_weight=1.0`, and LayerMatch on top of
FlexMatch is either `algorithm=layermatch, pseudo_label.policy=flexmatch` or
`algorithm=flexmatch, layermatch.head_grad_scale=0, layermatch.cluster_weight=1`.
"""

from layermatch_jax.algorithms import policies

_PSEUDO_LABEL = dict(unsup_weight=1.0, head_grad_scale=1.0, cluster_weight=0.0)

PRESETS = {
    # Labeled loss only: the unlabeled batch is not even forwarded.
    'supervised': dict(unsup_weight=0.0, head_grad_scale=1.0, cluster_weight=0.0,
                       policy='fixed'),
    # Pseudo-labels train every layer; no clustering.
    'fixmatch': dict(_PSEUDO_LABEL, policy='fixed'),
    # Grad-ReLU (no pseudo-label gradient into the head) + Avg-Clustering.
    'layermatch': dict(unsup_weight=1.0, head_grad_scale=0.0, cluster_weight=1.0,
                       policy='fixed'),
    # The other pseudo-label policies, plain (every layer, no clustering).
    'flexmatch': dict(_PSEUDO_LABEL, policy='flexmatch'),
    'freematch': dict(_PSEUDO_LABEL, policy='freematch'),
    'softmatch': dict(_PSEUDO_LABEL, policy='softmatch'),
}


def _preset(config) -> dict:
  if config.algorithm not in PRESETS:
    raise ValueError(f'algorithm={config.algorithm!r} is not one of {sorted(PRESETS)}')
  return PRESETS[config.algorithm]


def resolve(config) -> dict:
  """Returns the effective {unsup_weight, head_grad_scale, head_bias_grad_scale,
  cluster_weight} for `config`, raising ValueError on an unknown algorithm."""
  preset = _preset(config)

  def pick(value, default):
    return float(default if value is None else value)

  knobs = dict(
      unsup_weight=pick(config.pseudo_label.unsup_weight, preset['unsup_weight']),
      head_grad_scale=pick(config.layermatch.head_grad_scale, preset['head_grad_scale']),
      cluster_weight=pick(config.layermatch.cluster_weight, preset['cluster_weight']),
  )
  knobs['head_bias_grad_scale'] = pick(config.layermatch.head_bias_grad_scale,
                                       knobs['head_grad_scale'])
  return knobs


def resolve_policy(config) -> str:
  """The pseudo-label policy: `pseudo_label.policy` if set, else the preset's."""
  preset = _preset(config)
  name = config.pseudo_label.get('policy')
  name = preset['policy'] if name is None else name
  if name not in policies.POLICIES:
    raise ValueError(f'pseudo_label.policy={name!r} is not one of {sorted(policies.POLICIES)}')
  return name
