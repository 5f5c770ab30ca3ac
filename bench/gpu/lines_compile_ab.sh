# How fast the lines workload steps eager and compiled (training.compile through the Trainer's torch.compile): bench
# lines (the small preset, 448x112 lines, batch 256) twice on one machine, 400 steps each, five steady steps profiled.
# The GPU was busy half the time in its last profile (bench_lines_qwen2_5_vl_small_layout_h200_profile.json): the
# rest is launches and host work, which a compiled step fuses. The second run reuses the lines the first rendered.
# Predictions: docs/performance-notes.md, "Twentieth session"; measured: "Twenty-first session".
source bench/gpu/setup.sh
timeout 200 python3 -m ocrloop bench lines --out "$OUT/bench_lines_eager_h200.json" --steps 400 --batch-size 256 \
  --workers 12 --profile-steps 5 > "$OUT/eager.log" 2>&1
echo "rc=$?" >> "$OUT/eager.log"
timeout 330 python3 -m ocrloop bench lines --out "$OUT/bench_lines_compiled_h200.json" --steps 400 --batch-size 256 \
  --workers 12 --profile-steps 5 --compile > "$OUT/compiled.log" 2>&1
echo "rc=$?" >> "$OUT/compiled.log"
