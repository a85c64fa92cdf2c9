#!/usr/bin/env bash
# Sets up a virtual environment (the same pinned packages as the tests) and runs the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c .ci/constraints.txt -e ".[all]"
.venv/bin/energymask demo "$@"
