# Does the pages stage repeat its lessons too (600 steps of 64 over 6,000 pages is 6.4 passes)? The same run as
# pretrain_lines180k.sh with 15,000 distinct pages (run 19). Run again as run 21 (NAME=pages15k_repeat) with the
# reader saved for photo_loop.sh: runs 18 and 20 were the same run through their lines stage and read lines at 16.7
# and 25.6 %, so one run says little. NAME: the result's name (default pages15k).
source bench/gpu/setup.sh
timeout 590 python3 -m ocrloop bench pretrain --out "$OUT/bench_pretrain_photos_${NAME:-pages15k}_h200.json" \
  --workers 12 --render-processes 12 --photos 0.3 --lessons 30000,180000,12000,15000 \
  --save-model build/base-reader > "$OUT/pretrain.log" 2>&1
echo "rc=$?" >> "$OUT/pretrain.log"
