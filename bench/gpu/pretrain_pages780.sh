# Run 22 (issue 21): run 21 (pretrain_pages15k.sh) with 780 pages steps instead of 600 (one change), the reader saved
# for photo_loop.sh. Reads without cuDNN's attention made run 21 43 s shorter than run 19 (513 s against 556 s);
# 180 pages steps take about as long. Predictions: docs/performance-notes.md, "Seventeenth session".
source bench/gpu/setup.sh
timeout 590 python3 -m ocrloop bench pretrain --out "$OUT/bench_pretrain_photos_pages780_h200.json" \
  --workers 12 --render-processes 12 --photos 0.3 --lessons 30000,180000,12000,15000 --steps 840,1400,300,780 \
  --save-model build/base-reader > "$OUT/pretrain.log" 2>&1
echo "rc=$?" >> "$OUT/pretrain.log"
