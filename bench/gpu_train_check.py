"""GPU verification of the training engine (issue 3): full-size architectures, random weights,
a few steps each through `ocrloop train` itself, on the Unsloth backend.

    python bench/gpu_train_check.py --out DIR [--only deepseek-ocr-2-lora16,...] [--steps 12]

Writes DIR/gpu_train_check.json with steps/s, samples/s and peak VRAM from each run card.
Random weights measure speed and memory, not accuracy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ocrloop.bench.train import prepare, run_variant

RUNS = {
    "deepseek-ocr-2-lora16": ("deepseek-ocr-2", ["--mode", "lora16"]),
    "deepseek-ocr-2-qlora4": ("deepseek-ocr-2", ["--mode", "qlora4"]),
    "qwen2.5-vl-7b-qlora4": ("qwen2.5-vl", ["--mode", "qlora4"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ocrloop-gpu-check"))
    parser.add_argument("--only", default=",".join(RUNS))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.only.split(","):
        family, flags = RUNS[name]
        workspace, checkpoint = prepare(args.work, family, "full", 40, ("receipt", "invoice", "tax_form"))
        shared = ["--backend", "unsloth", "--resolution", "base", "--max-steps", str(args.steps), "--batch-size", str(args.batch_size),
                  "--gradient-accumulation-steps", "1", "--warmup-steps", "0"]
        results[name] = run_variant(workspace, checkpoint, args.work / "runs" / name, shared + flags, args.out / f"{name}.log")
        print(name, results[name].get("steady_seconds_per_step") or results[name].get("error"), flush=True)
        (args.out / "gpu_train_check.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
