# Issue 20, on nvidia-h200-x2 only: the whole training run of full-size DeepSeek-OCR-2 on one and on two GPUs.
source bench/gpu/setup.sh
timeout 590 python3 -m ocrloop bench train --out "$OUT/bench_run_deepseek_ocr2_two_gpus_h200.json" \
  --family deepseek-ocr-2 --size full --resolution base --batch-size 8 --epochs 3 --pages 512 \
  --variants ocrloop-hf,ocrloop-hf-compile,ocrloop-hf-peft-experts --processes 1,2 > "$OUT/train.log" 2>&1
echo "rc=$?" >> "$OUT/train.log"
