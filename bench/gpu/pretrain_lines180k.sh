# Run 18 (issue 21): run 13's curriculum with 180,000 distinct lines instead of 60,000 (one change), saving the
# reader for photo_loop.sh. Predictions: docs/performance-notes.md, "For the next session's device minutes".
source bench/gpu/setup.sh
timeout 590 python3 -m ocrloop bench pretrain --out "$OUT/bench_pretrain_photos_lines180k_h200.json" \
  --workers 12 --render-processes 12 --photos 0.3 --lessons 30000,180000,12000,6000 \
  --save-model build/base-reader > "$OUT/pretrain.log" 2>&1
echo "rc=$?" >> "$OUT/pretrain.log"
