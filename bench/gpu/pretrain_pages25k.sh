# Run 20 (issue 21): run 19 (pretrain_pages15k.sh) with 25,000 distinct pages instead of 15,000 (one change), saving
# the reader for photo_loop.sh. Measured (seventeenth session): it did not fit in 590 s. It was stopped after the pages
# stage's final validation, before the reader was saved; about 45 s before the pages stage's first step are not
# accounted for (how long it waited for its 25,000 pages is recorded only when the stage ends). Not to run as it is.
source bench/gpu/setup.sh
timeout 590 python3 -m ocrloop bench pretrain --out "$OUT/bench_pretrain_photos_pages25k_h200.json" \
  --workers 12 --render-processes 12 --photos 0.3 --lessons 30000,180000,12000,25000 \
  --save-model build/base-reader > "$OUT/pretrain.log" 2>&1
echo "rc=$?" >> "$OUT/pretrain.log"
