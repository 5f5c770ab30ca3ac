# Does the pages stage repeat its lessons too (600 steps of 64 over 6,000 pages is 6.4 passes)? The same run as
# pretrain_lines180k.sh with 15,000 distinct pages, nothing saved.
source bench/gpu/setup.sh
timeout 590 python3 -m ocrloop bench pretrain --out "$OUT/bench_pretrain_photos_pages15k_h200.json" \
  --workers 12 --render-processes 12 --photos 0.3 --lessons 30000,180000,12000,15000 > "$OUT/pretrain.log" 2>&1
echo "rc=$?" >> "$OUT/pretrain.log"
