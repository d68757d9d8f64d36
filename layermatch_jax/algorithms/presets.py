"""Algorithm presets: named settings of the knobs of one train step.

A knob left as None in the config takes the preset's value; a knob set
explicitly wins, so e.g. FixMatch + Avg-Clustering is
`algorithm=fixmatch, layermatch.cluster_weight=1.0`.
"""

PRESETS = {
    # Labeled loss only: the unlabeled batch is not even forwarded.
    'supervised': dict(unsup_weight=0.0, head_grad_scale=1.0, cluster_weight=0.0),
    # Pseudo-labels train every layer; no clustering.
    'fixmatch': dict(unsup_weight=1.0, head_grad_scale=1.0, cluster_weight=0.0),
    # Grad-ReLU (no pseudo-label gradient into the head) + Avg-Clustering.
    'layermatch': dict(unsup_weight=1.0, head_grad_scale=0.0, cluster_weight=1.0),
}


def resolve(config) -> dict:
  """Returns the effective {unsup_weight, head_grad_scale, head_bias_grad_scale,
  cluster_weight} for `config`, raising ValueError on an unknown algorithm."""
  if config.algorithm not in PRESETS:
    raise ValueError(f'algorithm={config.algorithm!r} is not one of {sorted(PRESETS)}')
  preset = PRESETS[config.algorithm]

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
