#!/usr/bin/env bash
# Create .venv in the repository (if absent) and install opencellplm with its test extra.
# torch is installed first, pinned, so that pip keeps the CPU build on CPU machines instead of
# pulling a multi-GB CUDA build; set TORCH_SPEC to choose another (e.g. TORCH_SPEC="torch==2.13.0"
# with an --index-url of your CUDA flavour in PIP_INDEX_URL).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install --quiet -e '.[test]'
.venv/bin/python -c "import opencellplm, torch; print(f'opencellplm {opencellplm.__version__} ready (torch {torch.__version__})')"
