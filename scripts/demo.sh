#!/usr/bin/env bash
# The main job on a CPU, end to end: synthetic documents -> validate -> document mix ->
# zero-shot evaluation -> fine-tune -> evaluation with the before/after table.
# Uses the tiny DeepSeek-OCR-2 preset (random weights, built locally: nothing is downloaded),
# so the numbers show the machinery, not OCR quality.
set -euo pipefail
WORKSPACE="${1:-demo-workspace}"
RUN="models/run-$(date +%Y%m%d-%H%M%S)"
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONWARNINGS=ignore

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "workspace"
ocrloop init "$WORKSPACE" --base-model tiny-deepseek-ocr-2
cd "$WORKSPACE"

step "synthetic receipts, invoices, contracts and tax forms"
ocrloop data synth --n 24 --seed 1 --scale 0.5

step "validation"
ocrloop data validate

step "document mix"
ocrloop data stats

step "zero-shot evaluation of the base model"
ocrloop eval --model tiny-deepseek-ocr-2 --split test --resolution small --max-new-tokens 64 \
  --save-predictions base-predictions.jsonl

step "fine-tuning ($RUN)"
ocrloop train --output "$RUN" --max-steps 30 --batch-size 2 --gradient-accumulation-steps 1 --warmup-steps 0 \
  --resolution small --mode full --learning-rate 3e-3 --eval-steps 15 --max-new-tokens 64 --no-gradient-checkpointing

step "before / after on the test split"
ocrloop eval --model "$RUN" --compare base-predictions.jsonl --split test --resolution small --max-new-tokens 64 \
  --output "$RUN/test-report.json"
echo
echo "run card: $WORKSPACE/$RUN/run_card.json"
