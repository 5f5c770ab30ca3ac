#!/usr/bin/env bash
# The main job on a CPU, end to end: synthetic documents -> validate -> document mix ->
# the loop's first run (challenger vs the base model) -> new documents arrive -> a second
# run triggered by them -> the promotion decision -> OCR of a document with the champion.
# Uses the tiny DeepSeek-OCR-2 preset (random weights, built locally: nothing is downloaded),
# so the numbers show the machinery, not OCR quality.
set -euo pipefail
WORKSPACE="${1:-demo-workspace}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONWARNINGS=ignore

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "workspace"
ocrloop init "$WORKSPACE" --base-model tiny-deepseek-ocr-2
cd "$WORKSPACE"
# CPU-sized training: a few full fine-tuning steps of the 0.4 M-parameter model.
for setting in "training.mode full" "training.max_steps 30" "training.batch_size 2" "training.gradient_accumulation_steps 1" \
               "training.warmup_steps 0" "training.learning_rate 0.003" "training.resolution small" \
               "training.max_new_tokens 64" "training.gradient_checkpointing false" "loop.new_documents_threshold 10" \
               "loop.min_test_pages 2"; do
  ocrloop config set $setting > /dev/null
done

step "synthetic receipts, invoices, contracts and tax forms"
ocrloop data synth --n 24 --seed 1 --scale 0.5

step "validation"
ocrloop data validate

step "document mix"
ocrloop data stats

step "loop: would it retrain?"
ocrloop loop run --dry-run

step "loop: first run (the base model's zero-shot scores are the champion to beat)"
ocrloop loop run

step "new documents arrive"
ocrloop data synth --n 12 --seed 2 --scale 0.5
ocrloop loop run --dry-run

step "loop: second run, triggered by the new documents"
ocrloop loop run

step "history"
ocrloop loop history
ocrloop models list

step "OCR of a test document with the champion"
ocrloop ocr "$(ls data/ocr_documents/test/* | head -n 1)"

step "report: plots of the loop's history and the before/after table in one HTML file"
ocrloop report --out report.html

step "see it in a browser"
echo "report: $PWD/report.html"
echo "the web page: run \`ocrloop serve -w $PWD\`, then open http://127.0.0.1:8000/ (drop a document) and /runs"
