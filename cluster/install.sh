#!/usr/bin/env bash
# Install longctx into the current Python environment.
#
#   bash cluster/install.sh           # runtime only
#   bash cluster/install.sh --dev     # + test tools and the eval extra (lm-eval, for `longctx eval harness`)
#   bash cluster/install.sh --docs    # + mkdocs
#   bash cluster/install.sh --dev --docs  # both
#
# torch is chosen so that a CPU-only machine never downloads a multi-GB CUDA build:
#   1. LONGCTX_TORCH_SPEC set      -> pip install $LONGCTX_TORCH_SPEC (word-split, so it
#                                     may carry pip options such as --index-url)
#   2. torch>=2.6 already importable -> kept as it is
#   3. nvidia-smi on PATH           -> torch>=2.6 from PyPI (CUDA build)
#   4. otherwise (CPU only)         -> torch==2.13.0 from a local wheel if pip's
#                                     find-links has one, else the CPU index of
#                                     download.pytorch.org
set -euo pipefail

PY=python
command -v "$PY" >/dev/null 2>&1 || PY=python3
PIP=("$PY" -m pip)
CPU_TORCH_VERSION="2.13.0"
CPU_TORCH_INDEX="https://download.pytorch.org/whl/cpu"

extras=()
for arg in "$@"; do
  case "$arg" in
    --dev) extras+=(dev eval) ;;
    --docs) extras+=(docs) ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "usage: $0 [--dev] [--docs]" >&2; exit 2 ;;
  esac
done
extra=""
if (( ${#extras[@]} )); then
  extra="[$(IFS=,; echo "${extras[*]}")]"
fi

cd "$(dirname "${BASH_SOURCE[0]}")/.."
say() { echo "[install] $*"; }

say "python: $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])')"

if [[ -n "${LONGCTX_TORCH_SPEC:-}" ]]; then
  say "torch: installing LONGCTX_TORCH_SPEC=${LONGCTX_TORCH_SPEC}"
  # shellcheck disable=SC2086  # intentional word splitting: the spec may hold pip options
  "${PIP[@]}" install $LONGCTX_TORCH_SPEC
elif have=$("$PY" -c 'import torch, sys
v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
print(torch.__version__); sys.exit(0 if v >= (2, 6) else 1)' 2>/dev/null); then
  say "torch: keeping installed torch ${have}"
elif command -v nvidia-smi >/dev/null 2>&1; then
  say "torch: nvidia-smi found, installing torch>=2.6 from PyPI (CUDA build)"
  "${PIP[@]}" install "torch>=2.6"
else
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  if "${PIP[@]}" download -q --no-index --no-deps -d "$tmp" "torch==${CPU_TORCH_VERSION}" >/dev/null 2>&1; then
    whl=$(ls "$tmp"/torch-*.whl)
    say "torch: CPU only, installing local wheel $(basename "$whl")"
    "${PIP[@]}" install "$whl"
  else
    say "torch: CPU only, no local wheel, installing torch==${CPU_TORCH_VERSION} from ${CPU_TORCH_INDEX}"
    "${PIP[@]}" install "torch==${CPU_TORCH_VERSION}" --index-url "$CPU_TORCH_INDEX"
  fi
fi

say "longctx: pip install -e .${extra}"
"${PIP[@]}" install -e ".${extra}"
say "done: torch $("$PY" -c 'import torch; print(torch.__version__)')"
