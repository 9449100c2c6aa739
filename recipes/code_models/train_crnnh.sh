#!/bin/sh
# Train the shipped CRNNH code models' two heads, musichash/models/weights/crnnh{16,32,48,64,128}.safetensors
# (track codes: labels and the similarity term, random batches, no pull between views) and
# crnnh{bits}_segments.safetensors (segment codes: runs of one file per batch, views pulled together, no
# similarity term: only finding clips), each with a .json (data summary, settings, per-epoch losses and held-out metrics), on two thirds of the
# fit corpus (train.jsonl, labelled by soundtrack, composer and instrument family), and run the
# engine on the other third (calibration.jsonl, music the models never heard) to fit crnnh64's
# match, chroma and dedup thresholds and write them into crnnh64_segments.json (see recipes/code_models/README.md).
#
#   sh recipes/code_models/train_crnnh.sh [FIT_CORPUS] [WORK]
#
# FIT_CORPUS (default /tmp/corpus_crnnh) is built when missing, with the evaluation corpus
# (FIT_CORPUS's scores must not overlap it): the interim models' fit corpus plus supertuxkart-data and
# 40 more MIDI renders (170 files; see recipes/code_models/README.md). Two feature caches: two degraded views
# per window for the track heads (about 0.7 GB, ~15 min on 2 cores), six for the segment heads (about
# 1.7 GB, ~20 min: more degradations of the same windows, then more music, each raised the share of 5 s
# clips found top-1, benchmarks/HISTORY.md); about a minute a head.
#
# Since issue 22, crnnh64's segment head is not this script's: recipes/code_models/train_ident.sh trains
# it for identification and fits its thresholds; run it after this one.
set -eu
absolute() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
corpus=$(absolute "${1:-/tmp/corpus_crnnh}")
work=$(absolute "${2:-/tmp/crnnh_train}")
cd "$(dirname "$0")/../.."  # the repository root: the Python steps run as modules of benchmarks and recipes
weights=musichash/models/weights

if [ ! -f "$corpus/manifest.jsonl" ]; then
    [ -f /tmp/corpus_full/manifest.jsonl ] || python -m benchmarks.corpus --out /tmp/corpus_full \
        --packages planetblupi-music-ogg fb-music-high --midi 10
    python -m benchmarks.corpus --out "$corpus" --seed 1 --midi 80 \
        --packages pushover-data tomatoes-data xmoto-data extremetuxracer-data openclonk-data supertuxkart-data \
        --exclude-scores-of /tmp/corpus_full/manifest.jsonl
fi
python -m recipes.code_models.split_fit "$corpus"
mkdir -p "$work"
for bits in 64 16 32 48 128; do
    musichash train "$corpus/train.jsonl" --layout manifest --out "$work/crnnh$bits" --bits "$bits" --epochs 30 \
        --select learned --similarity 5 --pull 0 --batches random --views 2 --max-minutes 3 --seed 0 \
        --cache "$work/features.h5"
    cp "$work/crnnh$bits/crnnh.safetensors" "$weights/crnnh$bits.safetensors"
    cp "$work/crnnh$bits/crnnh.json" "$weights/crnnh$bits.json"
    musichash train "$corpus/train.jsonl" --layout manifest --out "$work/crnnh${bits}_segments" --bits "$bits" --epochs 30 \
        --select learned --similarity 0 --views 6 --max-minutes 3 --seed 0 --cache "$work/features_views6.h5"
    cp "$work/crnnh${bits}_segments/crnnh.safetensors" "$weights/crnnh${bits}_segments.safetensors"
    cp "$work/crnnh${bits}_segments/crnnh.json" "$weights/crnnh${bits}_segments.json"
done
python -m benchmarks.eval_engine --manifest "$corpus/calibration.jsonl" --work "$work/calibration" \
    --code-model crnnh64 --minutes-per-track 3 --held-out 6 --query-set core --queries 20 --dedup-tracks 8 \
    --write-thresholds --json "$work/calibration.json" > "$work/calibration.md"
echo "thresholds written into $weights/crnnh64_segments.json; the figures they come from: $work/calibration.md"
