#!/usr/bin/env bash
# Run qgis_process with AlignKit and its Python dependencies, without touching the user's profile:
# a project-local QGIS profile (.qgis-profile/) holds a link to this checkout as plugin `alignkit`.
# Debian's /usr/bin/qgis_process wrapper passes a flag 3.22 rejects, so call qgis_process.bin.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
profile="$root/.qgis-profile"
plugins="$profile/profiles/default/python/plugins"
mkdir -p "$plugins"
ln -sfn "$root" "$plugins/alignkit"
export QGIS_CUSTOM_CONFIG_PATH="$profile"
export QT_QPA_PLATFORM="${QT_QPA_PLATFORM:-offscreen}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/runtime-$(id -u)}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
site="$root/.venv/lib/python3.11/site-packages"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
if ! grep -qs "^alignkit=true" "$profile/profiles/default/QGIS/QGIS3.ini"; then
  qgis_process.bin plugins enable alignkit >/dev/null 2>&1 || true
fi
exec qgis_process.bin "$@"
