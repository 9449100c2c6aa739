#!/bin/sh
# Fine-tune copies of the VGG's blocks 4 and 5 with crnnh64's identification head (issue 22, item 2's
# second half), and score the result on the package-split corpus's calibration split.
#
#   sh recipes/code_models/train_tuned.sh [CORPUS] [WORK] [INIT]
#
# CORPUS, WORK: as for train_ident.sh (run it first: its head is the start). INIT (default: train_ident.sh's
# head, WORK/seg64/crnnh.safetensors, the frozen-backbone head shipped before): the head the run starts from. The tagger
# keeps the exact musicnn weights; blocks 1-3 are shared. On 2 CPU cores: the cache (six views per window,
# two of them 2 s clips, each window's pool3 kept; about 6.5 GB) takes about 13 min, an epoch about 25 s,
# the calibration run about 13 min. On a GPU machine the same command runs its epochs there (see
# recipes/code_models/README.md for what the full GPU run should change: all five blocks, more music).
set -eu
absolute() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
corpus=$(absolute "${1:-/tmp/corpus22}")
work=$(absolute "${2:-/tmp/idtrain}")
cd "$(dirname "$0")/../.."
init=$(absolute "${3:-$work/seg64/crnnh.safetensors}")
mkdir -p "$work"
python -m recipes.code_models.ident_manifest --corpus "$corpus" --out "$work/train_ident.jsonl"
musichash train "$work/train_ident.jsonl" --layout manifest --out "$work/seg64_tuned" --bits 64 --epochs 15 \
    --select learned --similarity 0 --views 6 --short-views 2 --view-kind identification --jitter 24 \
    --tune-backbone --init "$init" --lr 3e-4 --tune-lr 3e-4 --max-minutes 5 --seed 1 --cache "$work/features_tune6.h5"
python -m benchmarks.eval_ident --manifest "$corpus/manifest.jsonl" --work "$work/calibration_tuned" --split calibration \
    --no-chromaprint --segment-hop-frames 48 --code-model "$work/seg64_tuned/crnnh.safetensors" --write-thresholds \
    --json "$work/calibration_tuned.json" > "$work/calibration_tuned.md"
echo "fine-tuned head: $work/seg64_tuned/crnnh.safetensors; its calibration figures: $work/calibration_tuned.md"
