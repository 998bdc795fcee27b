#!/bin/sh
# Installs xnli-serve into a virtual environment exactly as the container images do (the Dockerfile runs this;
# tests/integration/deploy/test_image_install.py runs it too, so the image's install path is exercised without Docker).
#   install.sh VENV SOURCE_DIR [deps|app] [TORCH_SPEC] [TORCH_INDEX_URL]
#     deps: third-party dependencies only (the cached image layer); app: the project itself, without dependencies.
set -eu
venv=$1
source_dir=$2
step=${3:-deps}
torch_spec=${4:-torch==2.13.0}
torch_index=${5:-}

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
    # The runtime dependencies from pyproject.toml, without the project (its source is not copied yet).
    "$venv/bin/python" - "$source_dir/pyproject.toml" > /tmp/xnli-serve-requirements.txt <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as handle:
    print("\n".join(tomllib.load(handle)["project"]["dependencies"]))
PY
    "$pip" install --no-cache-dir --quiet -r /tmp/xnli-serve-requirements.txt
    rm -f /tmp/xnli-serve-requirements.txt
    ;;
  app)
    "$pip" install --no-cache-dir --quiet --no-deps "$source_dir"
    ;;
  *)
    echo "install.sh: step must be deps or app, got $step" >&2
    exit 2
    ;;
esac
