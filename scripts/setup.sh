#!/usr/bin/env bash
# Create .venv and install ownllm with everything it needs, choosing the right PyTorch build.
#
# PyTorch is the delicate part:
#   * a torch already importable (in .venv, or in the Python that creates it) is kept;
#   * with an NVIDIA GPU (nvidia-smi lists one) we install the default build, which is CUDA-enabled;
#   * otherwise we install the pinned CPU version (torch==$TORCH_CPU_VERSION). On machines that
#     carry a local CPU wheel (pip's find-links) that file is used; elsewhere set
#     TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu to avoid pulling CUDA packages.
# Overrides: PYTHON (interpreter), TORCH_SPEC (exact pip requirement), TORCH_INDEX_URL, EXTRAS.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_CPU_VERSION=2.13.0
EXTRAS=${EXTRAS:-dev}

say() { printf '[setup] %s\n' "$*"; }

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "error: $PYTHON not found; install Python 3.11+ or set PYTHON=/path/to/python3" >&2
    exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    echo "error: ownllm needs Python 3.11 or newer ($PYTHON is $("$PYTHON" -V 2>&1)); set PYTHON=..." >&2
    exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
    if "$PYTHON" -c 'import torch' >/dev/null 2>&1; then
        say "creating $VENV that sees the torch already installed for $PYTHON"
        "$PYTHON" -m venv --system-site-packages "$VENV"
    else
        say "creating $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
fi
# pip warns about every missing entry of an unreachable extra index; that noise hides real errors.
pip_install() {
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
torch_version() { "$VENV/bin/python" -W ignore -c 'import torch; print(torch.__version__, "(CUDA build)" if torch.version.cuda else "(CPU build)")' 2>/dev/null; }

if "$VENV/bin/python" -c 'import torch' >/dev/null 2>&1; then
    say "keeping the installed torch: $(torch_version)"
else
    if [ -n "${TORCH_SPEC:-}" ]; then
        spec=$TORCH_SPEC; why="TORCH_SPEC"
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        spec=torch; why="an NVIDIA GPU is present: default CUDA build"
    else
        spec="torch==$TORCH_CPU_VERSION"; why="no NVIDIA GPU: CPU build"
    fi
    say "installing $spec ($why)"
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
        pip_install --index-url "$TORCH_INDEX_URL" "$spec"
    else
        pip_install "$spec"
    fi
    say "installed torch $(torch_version)"
fi

say "installing ownllm[$EXTRAS] and its dependencies"
pip_install -e ".[$EXTRAS]"
say "done: $("$VENV/bin/ownllm" --version)"
# The chat page's browser tests drive the system's Chromium through Playwright (no browser download).
if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
    say "note: no Chromium: the web page's browser tests will be skipped (Debian/Ubuntu: apt-get install chromium)"
fi
