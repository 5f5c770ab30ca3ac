# Run 24 (issue 21): run 23 (pretrain_pages900.sh: 900 pages steps on 20,000 pages, 1,250 line steps) under a time
# budget. Machines of one kind trained 17 % apart (runs 22 and 23), so a fixed schedule that fits on one is cut off by
# the timeout on another. With --time-budget the pages stage keeps the steps that fit in what the budget leaves, with
# its learning rate decaying to zero at the new end, and the reader is always saved and read. 550 s of budget, the
# set-up and imports before it (about 25 s) and the timeout's backstop fit the call's 600 s.
# Five pages steps from the stage's middle are profiled (where its 0.22 s a step go).
# Predictions: docs/performance-notes.md, "Eighteenth session".
source bench/gpu/setup.sh
timeout 585 python3 -m ocrloop bench pretrain --out "$OUT/bench_pretrain_photos_budget_h200.json" \
  --workers 12 --render-processes 12 --photos 0.3 --lessons 30000,180000,12000,20000 --steps 840,1250,300,900 \
  --time-budget 550 --profile-steps 5 --save-model build/base-reader > "$OUT/pretrain.log" 2>&1
echo "rc=$?" >> "$OUT/pretrain.log"
