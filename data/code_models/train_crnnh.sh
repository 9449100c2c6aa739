#!/bin/sh
# Train the shipped CRNNH code models, musichash/models/weights/crnnh{16,32,48,64,128}.safetensors
# (+ .json: data summary, settings, per-epoch losses and held-out metrics), on the fit corpus.
#
#   sh data/code_models/train_crnnh.sh [FIT_CORPUS] [WORK]
#
# FIT_CORPUS (default /tmp/corpus_fit) is built when missing, with the evaluation corpus
# (/tmp/corpus_fit's scores must not overlap it): see data/code_models/README.md for the packages.
# One feature cache (about 500 MB, ~12 min on 2 cores) serves all five bit counts (~2 min each).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
corpus=${1:-/tmp/corpus_fit}
work=${2:-/tmp/crnnh_train}
weights="$root/musichash/models/weights"

if [ ! -f "$corpus/manifest.jsonl" ]; then
    [ -f /tmp/corpus_full/manifest.jsonl ] || python "$root/benchmarks/corpus.py" --out /tmp/corpus_full \
        --packages planetblupi-music-ogg fb-music-high --midi 10
    python "$root/benchmarks/corpus.py" --out "$corpus" --seed 1 --midi 40 \
        --packages pushover-data tomatoes-data xmoto-data extremetuxracer-data openclonk-data \
        --exclude-scores-of /tmp/corpus_full/manifest.jsonl
fi
mkdir -p "$work"
for bits in 64 16 32 48 128; do
    musichash train "$corpus" --layout unlabelled --out "$work/crnnh$bits" --bits "$bits" --epochs 30 \
        --select learned --views 2 --max-minutes 3 --seed 0 --cache "$work/features.h5"
    cp "$work/crnnh$bits/crnnh.safetensors" "$weights/crnnh$bits.safetensors"
    cp "$work/crnnh$bits/crnnh.json" "$weights/crnnh$bits.json"
done
