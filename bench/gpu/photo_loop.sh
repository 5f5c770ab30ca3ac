# The photo loop (issue 21, item 4) from the reader pretrain_lines180k.sh saved: call it within 30 s of that one,
# on the same machine (build/base-reader lives there only). LIMIT: seconds it may run (default 575).
source bench/gpu/setup.sh
[ -d build/base-reader ] || { echo "no build/base-reader on this machine: run pretrain_lines180k.sh first" | tee "$OUT/photo_loop.log"; exit 1; }
timeout "${LIMIT:-575}" python3 -m ocrloop bench photo-loop --out "$OUT/bench_photo_loop_lines180k_h200.json" \
  --reader build/base-reader --backend hf --workers 12 --render-processes 12 --steps 800 --learning-rate 5e-4 \
  --evals 1 > "$OUT/photo_loop.log" 2>&1
echo "rc=$?" >> "$OUT/photo_loop.log"
