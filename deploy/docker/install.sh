#!/bin/sh
# Installs xnli-serve into a virtual environment exactly as the container images do (the Dockerfile runs this;
# tests/integration/deploy/test_image_install.py runs it too, so the image's install path is exercised without Docker).
#   install.sh VENV SOURCE_DIR [deps|app] [TORCH_SPEC] [TORCH_INDEX_URL] [LOCK]
#     deps: third-party dependencies only (the cached image layer), exactly as LOCK pins them, every file checked
#       against its SHA-256 (default: deploy/requirements/cpu.lock; TORCH_SPEC is installed first, since the CPU
#       lock leaves torch to PyTorch's CPU index); app: the project itself, without dependencies.
set -eu
venv=$1
source_dir=$2
step=${3:-deps}
torch_spec=${4-torch==2.13.0}  # an empty TORCH_SPEC (the GPU image: torch is in its lock) installs none
torch_index=${5:-}
lock=${6:-$source_dir/deploy/requirements/cpu.lock}

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
pip="$venv/bin/pip"
"$pip" install --no-cache-dir --quiet --upgrade pip

case "$step" in
  deps)
    if [ -n "$torch_spec" ]; then
      if [ -n "$torch_index" ]; then
        "$pip" install --no-cache-dir --quiet --index-url "$torch_index" "$torch_spec"
      else
        "$pip" install --no-cache-dir --quiet "$torch_spec"
      fi
    fi
    "$pip" install --no-cache-dir --quiet --require-hashes --no-deps -r "$lock"
    ;;
  app)
    "$pip" install --no-cache-dir --quiet --no-deps "$source_dir"
    ;;
  *)
    echo "install.sh: step must be deps or app, got $step" >&2
    exit 2
    ;;
esac
