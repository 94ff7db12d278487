#!/usr/bin/env bash
# Runs on the lent GPU machine (docs/gpu.md). Two calls, made back to back while the machine is warm:
#   bash .gpu/b/repo/bench/gpu/device.sh stage .gpu/a     # call 1: keep the first chunk in /tmp
#   bash .gpu/b/repo/bench/gpu/device.sh run .gpu/b [check flags]   # call 2: unpack, install, run the check
# A rerun of call 2 on the same warm machine skips the unpacking and the phases that finished
# (bench/gpu/check.py keeps its results in /tmp/gpu-out and copies them to $OUT at the end).
# CHECK_TIMEOUT (seconds, default 300) bounds the check, so the copy to $OUT always happens.
set -uo pipefail
STAGE=/tmp/gpu-stage
SITE=/tmp/gpu-site
mkdir -p "$STAGE"
case "$1" in
stage)
    cp "$2"/ort.tar.zst.* "$STAGE"/ && ls -la "$STAGE"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    ;;
run)
    SRC=$(cd "$2" && pwd)
    cp "$SRC"/ort.tar.zst.* "$STAGE"/
    RUN_OUT=/tmp/gpu-out
    mkdir -p "$RUN_OUT"
    [ -d "$SITE/onnxruntime" ] && [ -d "$SITE/litestar" ] && UNPACKED=1 || UNPACKED=0
    [ "$UNPACKED" = 1 ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$SRC"/wheels/*.whl || exit 1
    # photos/: the bench photos as skimage/data (pack.sh), for bench/photos.py and the diagnose phase.
    export PYTHONPATH="$SITE:$SRC/repo:$SRC/photos"
    # onnxruntime-gpu, slimmed to sm_90 by bench/gpu/slim_ort.py, shadows the image's CPU onnxruntime.
    [ "$UNPACKED" = 1 ] || python3 - "$STAGE" "$SITE" <<'PY' || exit 1
import sys, tarfile, glob, zstandard
stage, site = sys.argv[1:]
class Chunks:  # the split parts, read as one stream
    def __init__(self, paths): self.files = [open(p, "rb") for p in sorted(paths)]
    def read(self, n=-1):
        while self.files:
            data = self.files[0].read(n)
            if data: return data
            self.files.pop(0)
        return b""
reader = zstandard.ZstdDecompressor(max_window_size=2**31).stream_reader(Chunks(glob.glob(stage + "/ort.tar.zst.*")))
tarfile.open(fileobj=reader, mode="r|").extractall(site)
PY
    # The CUDA 13 libraries ONNX Runtime needs (cuBLAS, cuDNN, cudart, cuRAND, cuFFT) are the image's
    # nvidia-* Python packages, installed for torch: put their folders on the loader's path.
    NV=$(python3 -c "import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))" 2>/dev/null)/nvidia
    export LD_LIBRARY_PATH=$(find "$NV" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd:):${LD_LIBRARY_PATH:-}
    python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.__file__, o.get_available_providers())"
    cd "$SRC/repo" && PYTHONUNBUFFERED=1 timeout -k 10 "${CHECK_TIMEOUT:-300}" \
        python3 -m bench.gpu.check --out "$RUN_OUT" --models /tmp/gpu-models "${@:3}" 2>&1 | tee -a "$RUN_OUT/log.txt"
    # STUDY: a shell command run next, in the same environment and under STUDY_TIMEOUT (default 200 s),
    # e.g. STUDY='python3 -m bench.studies.replicas --models /tmp/gpu-models ... && cp ... /tmp/gpu-out/'
    if [ -n "${STUDY:-}" ]; then
        (cd "$SRC/repo" && PYTHONUNBUFFERED=1 timeout -k 10 "${STUDY_TIMEOUT:-200}" bash -c "$STUDY") 2>&1 | tee -a "$RUN_OUT/log.txt"
    fi
    cp -r "$RUN_OUT"/. "$OUT"/
    ;;
esac
