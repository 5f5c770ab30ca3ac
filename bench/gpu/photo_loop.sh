# The photo loop (issue 21, item 4) from the reader a pretrain script saved (pretrain_pages25k.sh; run 18's was
# pretrain_lines180k.sh): call it within 30 s of that one, on the same machine (build/base-reader lives there only).
# NAME: the result's name (default pages25k); LIMIT: seconds it may run (default 575); EXTRA: more flags (default none;
# e.g. EXTRA="--train-templates 1": the business's photos all in a layout the reader never trained on, and the held-out
# photos in the trained layouts all in it too); STEPS: the loop's training steps (default 800).
# --render-processes 8: the workspace's photos of every loop but run 18's (documents rendered in processes depend on
# their number; the held-out photos are rendered by 8 whatever it says).
source bench/gpu/setup.sh
[ -d build/base-reader ] || { echo "no build/base-reader on this machine: run a pretrain script first" | tee "$OUT/photo_loop.log"; exit 1; }
timeout "${LIMIT:-575}" python3 -m ocrloop bench photo-loop --out "$OUT/bench_photo_loop_${NAME:-pages25k}_h200.json" \
  --reader build/base-reader --backend hf --workers 12 --render-processes 8 --steps ${STEPS:-800} --learning-rate 5e-4 \
  --evals 1 ${EXTRA:-} > "$OUT/photo_loop.log" 2>&1
echo "rc=$?" >> "$OUT/photo_loop.log"
