#!/usr/bin/env bash
# Prepares what the device check's two device calls carry (docs/gpu.md, "How it reaches the GPU").
# The device tool sends the lead's checkout plus carried ignored folders, at most 64 MiB per call, so:
#   DEST/a/  ort.tar.zst.aa                       (call 1: the first 60 MiB of the slimmed onnxruntime-gpu)
#   DEST/b/  ort.tar.zst.ab, wheels/, repo/, photos/   (call 2: the rest, the code, the photos)
# Usage: bench/gpu/pack.sh DEST [BRANCH]   (run from the repository; needs pip, zstd, readelf;
#        PYTHON: a python with the bench extra, for bench/photos.py; IMAGES=DIR overrides the photos)
set -euo pipefail
DEST=${1:?usage: pack.sh DEST [BRANCH]}
BRANCH=${2:-HEAD}
REPO=$(git rev-parse --show-toplevel)
PY=${PYTHON:-python3}
WORK=${WORK:-/tmp/gpu-pack}
PLAT="--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
mkdir -p "$WORK/ort" "$WORK/wheels"
# onnxruntime-gpu for CUDA 13 (the device's torch is cu130); the service's pure-Python deps the
# device image lacks (prometheus-client for /metrics, tqdm for resnet-export's and resnet-train's
# progress: both came after the first device run); zstandard to unpack the .tar.zst there (the
# image may have no zstd binary).
[ -f "$WORK/ort/"onnxruntime_gpu-1.31.1-*.whl ] || $PY -m pip download $PLAT -d "$WORK/ort" onnxruntime-gpu==1.31.1
$PY -m pip download -q $PLAT -d "$WORK/wheels" litestar==2.25.0 litestar-htmx==0.5.0 msgspec==0.22.0 \
    multipart==2.0.1 uvicorn==0.54.0 polyfactory==3.5.0 rich-click==1.9.9 faker==40.63.0 sniffio==1.3.1 zstandard==0.25.0 \
    prometheus-client==0.26.0 tqdm==4.70.1
[ -f "$WORK/ort.tar.zst" ] || $PY "$REPO/bench/gpu/slim_ort.py" "$WORK"/ort/onnxruntime_gpu-1.31.1-*.whl --arch 90 --out "$WORK/ort.tar.zst"
rm -rf "$DEST/a" "$DEST/b"
mkdir -p "$DEST/a" "$DEST/b/repo" "$DEST/b/photos/skimage/data"
split -b 60M "$WORK/ort.tar.zst" "$WORK/ort.tar.zst."
mv "$WORK/ort.tar.zst.aa" "$DEST/a/"
mv "$WORK"/ort.tar.zst.a[b-z] "$DEST/b/"
cp -r "$WORK/wheels" "$DEST/b/wheels"
git -C "$REPO" archive "$BRANCH" | tar -x -C "$DEST/b/repo"
# bench/photos.py finds the photos in scikit-image's package data, which the device image may lack:
# the photos go into photos/skimage/data, a namespace package that device.sh puts on
# the path (a real scikit-image, if the image has one, still wins: regular packages beat namespaces).
IMAGES=${IMAGES:-$(cd "$REPO" && $PY -c 'from bench import photos; print(photos.folder())')}
for name in $(cd "$REPO" && $PY -c 'from bench import photos; print(*photos.PHOTOS)'); do
    cp "$IMAGES/$name" "$DEST/b/photos/skimage/data/"
done
du -sh "$DEST/a" "$DEST/b"
