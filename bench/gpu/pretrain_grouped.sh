# Run 26 (issue 21): run 24 (pretrain_budget.sh) with the pages stage's batches grouped by length
# (training.group_by_length). pages_grouping_ab.sh measured grouped pages steps 26 % faster than random ones (GPU busy
# 82 % against 66 %), so the same budget holds about 1,000 pages steps instead of 797: the pages stage asks for 1,100
# and the budget keeps what fits. Run 25 ran this script when --group-by-length grouped every stage; its glyph stage
# never left its plateau (bench_pretrain_photos_grouped_every_stage_h200.json). Now only the pages stage groups.
# 256 test pages (--test-pages; the first 64 are those every run before read, scored apart): a pooled CER over 64
# spans about 4 points at 95 %, as wide as the differences between runs. Their reads take about 15 s more, so
# --time-reserve is 60 s (run 24 ended 3 s inside its 550 with 45).
# Predictions: docs/performance-notes.md, "Nineteenth session".
source bench/gpu/setup.sh
timeout 585 python3 -m ocrloop bench pretrain --out "$OUT/bench_pretrain_photos_grouped_pages_h200.json" \
  --workers 12 --render-processes 12 --photos 0.3 --lessons 30000,180000,12000,20000 --steps 840,1250,300,1100 \
  --time-budget 550 --time-reserve 60 --test-pages 256 --profile-steps 5 --group-by-length --save-model build/base-reader > "$OUT/pretrain.log" 2>&1
echo "rc=$?" >> "$OUT/pretrain.log"
