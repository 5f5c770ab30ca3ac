# Sourced first by every script here, on the lent GPU machine (through the device tool, run from the repository
# root with carry [".whl", ".fonts"]): installs the carried wheels once per machine, puts src/ on the path and
# records the GPU. .whl: ../shared/tools/gpu-wheels with the project's own extras (see docs/performance-notes.md);
# .fonts: the Liberation and FreeFont files the lessons draw with (make system-packages installs them here).
set -u
: "${OUT:?run through the device tool, which sets OUT}"
mkdir -p /tmp/site
[ -f /tmp/site/.done ] || {
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && touch /tmp/site/.done
}
export PYTHONPATH=/tmp/site:$PWD/src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10 \
       OCRLOOP_HOME=/tmp/oh OCRLOOP_FONT_DIRS=$PWD/.fonts NCCL_NVLS_ENABLE=0
nvidia-smi > "$OUT/gpu.txt"
