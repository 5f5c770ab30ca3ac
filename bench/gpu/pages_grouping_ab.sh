# How fast the pages stage steps with random batches and with batches grouped by length (training.group_by_length):
# the same short curriculum twice on one machine, only the pages stage long enough to time (300 steps of 64), five of
# its steps profiled in each. The second run reuses the lessons the first rendered. Speed only: 20 steps of glyphs,
# lines and blocks make no reader. Predictions: docs/performance-notes.md, "Eighteenth session".
source bench/gpu/setup.sh
timeout 275 python3 -m ocrloop bench pretrain --out "$OUT/bench_pretrain_pages_speed_random_h200.json" \
  --workers 12 --render-processes 12 --photos 0.3 --lessons 2000,2000,500,6000 --steps 20,20,20,300 \
  --profile-steps 5 > "$OUT/random.log" 2>&1
echo "rc=$?" >> "$OUT/random.log"
timeout 275 python3 -m ocrloop bench pretrain --out "$OUT/bench_pretrain_pages_speed_grouped_h200.json" \
  --workers 12 --render-processes 12 --photos 0.3 --lessons 2000,2000,500,6000 --steps 20,20,20,300 \
  --profile-steps 5 --group-by-length > "$OUT/grouped.log" 2>&1
echo "rc=$?" >> "$OUT/grouped.log"
