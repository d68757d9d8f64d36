#!/usr/bin/env bash
# The accelerator benchmark in one command, on a machine whose Python already has
# JAX for its GPU or TPU (this script never installs jax: a CPU build from PyPI
# would replace the accelerator's). About 8 minutes on one GPU.
#
#   benchmarks/accelerator.sh [OUT.json] [flags of layermatch-accelerator-benchmark]
#       e.g. benchmarks/accelerator.sh /tmp/h200.json --data=../shared/data/cifar10-jpeg.tar.gz
#   benchmarks/accelerator.sh --fetch-wheels
#       (on a machine with pip access) downloads the Python 3.12 wheels of the
#       packages such a machine tends to lack into .whl/, for one without internet.
#
# Steps: checks that jax imports and sees an accelerator (CPU only: says so and
# goes on, for trying the script); installs what is missing of the project's other
# imports, from .whl/ when it exists (into /tmp/layermatch-site, put on
# PYTHONPATH) or else with pip from the index, with the installed jax and jaxlib
# held at their versions; then runs tools/accelerator_benchmark.py. What cannot be
# installed is named in one `error:` line, exit status 2.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# Packages the benchmark imports that a CUDA/TPU JAX image may lack, with the
# versions requirements.txt pins (and what they need beyond such an image).
WHEELS=(
  ml-collections==1.1.0 grain==0.2.18 array-record==0.8.6 tensorboardX==2.6.5
  portpicker==1.6.0 importlib_resources==6.5.2
)
MODULES=(ml_collections grain array_record tensorboardX portpicker
  importlib_resources absl flax optax chex orbax.checkpoint numpy PIL sklearn
  flatbuffers safetensors etils cloudpickle yaml)

if [[ "${1:-}" == --fetch-wheels ]]; then
  mkdir -p .whl
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  for p in 24 27 28 31 34 35 17; do platforms+=(--platform "manylinux_2_${p}_x86_64"); done
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" --platform manylinux2014_x86_64 \
    --platform any -d .whl "${WHEELS[@]}"
  ls -1 .whl
  exit 0
fi

OUT=${1:-benchmarks/accelerator/$(date -u +%Y%m%d-%H%M%S).json}
[[ $# -gt 0 ]] && shift
mkdir -p "$(dirname "$OUT")"

if ! "$PY" -c 'import jax' 2>/dev/null; then
  echo "error: $PY cannot import jax: install JAX for this accelerator first (https://docs.jax.dev/en/latest/installation.html); this script does not" >&2
  exit 2
fi
"$PY" -c 'import jax, sys; d = jax.devices()[0]; print(f"jax {jax.__version__}, {jax.default_backend()}: {jax.device_count()} x {d.device_kind}, Python {sys.version.split()[0]}")'
if [[ "$("$PY" -c 'import jax; print(jax.default_backend())')" == cpu ]]; then
  echo 'note: jax sees no GPU or TPU; the numbers will be the CPU'"'"'s' >&2
fi

missing() {
  "$PY" - "${MODULES[@]}" <<'EOF'
import importlib.util, sys
print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m.split('.')[0]) is None))
EOF
}
need=$(missing)
if [[ -n "$need" ]]; then
  echo "missing: $need"
  if compgen -G '.whl/*.whl' > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target /tmp/layermatch-site .whl/*.whl
    export PYTHONPATH=/tmp/layermatch-site${PYTHONPATH:+:$PYTHONPATH}
  else
    hold=$(mktemp)
    "$PY" -c 'import jax, jaxlib; print(f"jax=={jax.__version__}\njaxlib=={jaxlib.__version__}")' > "$hold"
    "$PY" -m pip install -q -c "$hold" "${WHEELS[@]%%==*}" || true
    rm -f "$hold"
  fi
  need=$(missing)
  if [[ -n "$need" ]]; then
    echo "error: still missing Python modules: $need (pip install them without touching jax, or put their wheels in .whl/: benchmarks/accelerator.sh --fetch-wheels)" >&2
    exit 2
  fi
fi

exec env PYTHONUNBUFFERED=1 "$PY" tools/accelerator_benchmark.py --out="$OUT" "$@"
