# Run 20 (issue 21): run 19 (pretrain_pages15k.sh) with 25,000 distinct pages instead of 15,000 (one change), saving
# the reader for photo_loop.sh. Run 19's 15,000 pages were ready 131 s before the pages stage; 25,000 need about 85 s
# more. Predictions: docs/performance-notes.md, "Sixteenth session".
source bench/gpu/setup.sh
timeout 590 python3 -m ocrloop bench pretrain --out "$OUT/bench_pretrain_photos_pages25k_h200.json" \
  --workers 12 --render-processes 12 --photos 0.3 --lessons 30000,180000,12000,25000 \
  --save-model build/base-reader > "$OUT/pretrain.log" 2>&1
echo "rc=$?" >> "$OUT/pretrain.log"
