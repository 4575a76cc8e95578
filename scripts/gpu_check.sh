#!/usr/bin/env bash
# On a machine with an NVIDIA GPU, the CUDA toolkit (nvcc) and sdcpp installed with its test extras:
# build ggml's CUDA backend for one architecture beside the ggml sdcpp loads, run the parity tests with every
# model on the GPU (SDCPP_TEST_DEVICE, tests/conftest.py), time a short generation on the GPU and the CPU, and
# print one table.
#
#   bash scripts/gpu_check.sh 90            # compute capability: 86 RTX 30xx, 89 L4/RTX 40xx, 90 H100/H200
#   SKIP_BUILD=1 bash scripts/gpu_check.sh  # the CUDA module is already there
#
# The build takes ~15-25 min per architecture on 2 cores, a few minutes on 16.
set -uo pipefail
arch=${1:-}
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$(mktemp -d -t sdcpp-gpu-XXXXXX)}
mkdir -p "$out"

if [ -z "${SKIP_BUILD:-}" ]; then
    [ -n "$arch" ] || { echo "usage: gpu_check.sh CUDA_ARCH (e.g. 90), or SKIP_BUILD=1" >&2; exit 2; }
    sdcpp build-ggml --cuda "$arch" 2>&1 | tail -5 || { echo "CUDA build failed" >&2; exit 1; }
fi

python - <<'EOF' | tee "$out/devices.txt"
from sdcpp._native import core
info = core().system_info()
print("registries:", info.get("registries"))
print("devices:", info.get("devices"))
EOF

cd "$root"
parity="tests/test_clip.py tests/test_unet.py tests/test_vae.py tests/test_generate.py tests/test_load_and_quantize.py"
SDCPP_TEST_DEVICE=auto timeout 1800 python -m pytest -q $parity > "$out/parity-gpu.txt" 2>&1
parity_rc=$?

cd "$out"
sdcpp tiny-model tiny-sd1.safetensors --family sd1 > /dev/null
python - "$parity_rc" <<'EOF' | tee "$out/table.md"
import re, sys, time
import numpy as np
import sdcpp
from sdcpp._native import core

summary = open("parity-gpu.txt").read().strip().splitlines()[-1]
gpus = [d["name"] for d in core().system_info()["devices"] if d["type"] == "gpu"]
rows = [("GPU devices", ", ".join(gpus) or "NONE: every row below ran on the CPU"),
        ("parity tests, models on device auto (pytest rc %s)" % sys.argv[1], summary)]
images = {}
for device in ("auto", "cpu"):
    m = sdcpp.Model("tiny-sd1.safetensors", device=device)
    m.generate("a cat", steps=2, width=64, height=64, seed=1)  # warm-up: kernels, allocations
    t = time.perf_counter()
    out = m.generate("a cat", steps=8, width=64, height=64, seed=1)
    rows.append((f"8-step 64x64 generate on {m.weights.device}", f"{time.perf_counter() - t:.2f} s"))
    images[device] = np.asarray(out[0], dtype=np.float32)
diff = np.abs(images["auto"] - images["cpu"])
rows.append(("GPU vs CPU image, max / mean |diff| (0..255)", f"{diff.max():.1f} / {diff.mean():.2f}"))
print("| check | result |\n|---|---|")
for k, v in rows:
    print(f"| {k} | {v} |")
sys.exit(0 if gpus else 3)
EOF
table_rc=${PIPESTATUS[0]}
echo "logs in $out"
[ "$table_rc" -eq 0 ] || { echo "no GPU device: this was not a GPU check" >&2; exit "$table_rc"; }
exit $parity_rc
