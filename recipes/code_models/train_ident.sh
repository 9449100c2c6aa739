#!/bin/sh
# Train the shipped 64-bit segment head for identification (issue 22),
# musichash/models/weights/crnnh64_segments.safetensors (+ .json), and fit its thresholds on the
# package-split corpus's calibration split (see recipes/code_models/README.md, "The identification head").
#
#   sh recipes/code_models/train_ident.sh [CORPUS] [WORK]
#
# CORPUS (default /tmp/corpus22): benchmarks.corpus's package-split corpus (its command is in
# BENCHMARKS.md, "Identification on unseen music"). Needs neverball-data (apt-get install neverball-data).
# The feature cache (twelve views per window, two of them 2 s clips; about 4 GB) takes about 25 min on
# 2 cores, the head 2 min, the calibration run (index 8.4 h, search 1,000 clips) about 12 min.
set -eu
absolute() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
corpus=$(absolute "${1:-/tmp/corpus22}")
work=$(absolute "${2:-/tmp/idtrain}")
cd "$(dirname "$0")/../.."
weights=musichash/models/weights
mkdir -p "$work"
python -m recipes.code_models.ident_manifest --corpus "$corpus" --out "$work/train_ident.jsonl"
musichash train "$work/train_ident.jsonl" --layout manifest --out "$work/seg64" --bits 64 --epochs 30 \
    --select learned --similarity 0 --views 12 --short-views 2 --view-kind identification --jitter 24 \
    --max-minutes 5 --seed 1 --cache "$work/features_id12.h5"
# thresholds by clip length, fitted on the calibration split only, into the checkpoint's JSON
python -m benchmarks.eval_ident --manifest "$corpus/manifest.jsonl" --work "$work/calibration" --split calibration \
    --no-chromaprint --segment-hop-frames 48 --code-model "$work/seg64/crnnh.safetensors" --write-thresholds \
    --json "$work/calibration.json" > "$work/calibration.md"
cp "$work/seg64/crnnh.safetensors" "$weights/crnnh64_segments.safetensors"
python -m recipes.code_models.ship_segments "$work/seg64/crnnh.json" "$weights/crnnh64_segments.json"
echo "crnnh64's segment head and thresholds replaced; the figures they come from: $work/calibration.md"
