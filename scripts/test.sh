#!/usr/bin/env bash
# Sets up a virtual environment (torch 2.14.1 with torchvision and timm, run on CPU), lints,
# and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c .ci/constraints.txt -e ".[test]"
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
