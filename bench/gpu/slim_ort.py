"""Shrink the onnxruntime-gpu wheel to what one GPU architecture needs, so it fits the device's transfers.

onnxruntime-gpu 1.31.1 (cp312) is a 256 MB wheel; its libonnxruntime_providers_cuda.so (284 MB)
holds a fatbin of 218 MB with compiled kernels (cubins) for sm_75, 80, 86, 89, 90 and 120, each
zstd-compressed. A GPU loads only the cubin of its own architecture (no PTX is shipped, so nothing
else could run on it anyway). This script replaces every other cubin's payload with a filler of the
same decompressed size: the smallest cubin of that architecture in the file, padded with zeros (a
valid ELF, so tools that parse every entry, cuobjdump say, still work), zstd-compressed to a few
hundred bytes. Only the compressed-size field changes: the file keeps its layout (no relinking, every
offset stays valid) and the dropped bytes compress to nothing. It also leaves out the TensorRT provider. The result, a tar.zst of the `onnxruntime` package, is what
bench/gpu/device.sh unpacks on the device.

    python bench/gpu/slim_ort.py onnxruntime_gpu-1.31.1-cp312-*.whl --arch 90 --out ort-sm90.tar.zst
"""

from __future__ import annotations

import argparse
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from functools import cache
from pathlib import Path

FATBIN_MAGIC = 0xBA55ED50
CUBIN = 2  # entry kind: 1 = PTX, 2 = ELF (cubin)


def _zstd(data: bytes, *flags: str) -> bytes:
    return subprocess.run(["zstd", "-q", "-c", *flags], input=data, capture_output=True, check=True).stdout


@cache
def filler_frame(arch: int, size: int) -> bytes:
    """A zstd frame of the smallest cubin for `arch`, zero-padded to `size` bytes."""
    return _zstd(FILLERS[arch] + bytes(size - len(FILLERS[arch])), "-1")


FILLERS: dict[int, bytes] = {}  # arch -> the smallest decompressed cubin of that arch in the file


def _entries(data: bytearray, start: int, size: int):
    """(blob start, [(kind, arch, entry offset, header size, payload size)]) for each fatbin."""
    pos, end = start, start + size
    while pos < end:
        magic, _version, header, fat_size = struct.unpack_from("<IHHQ", data, pos)
        if magic != FATBIN_MAGIC:  # 8-byte alignment padding between fatbins
            pos += 8
            continue
        entries, entry, blob_end = [], pos + header, pos + header + fat_size
        while entry < blob_end:
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, entry)
            entries.append((kind, struct.unpack_from("<I", data, entry + 28)[0], entry, entry_header, payload))
            entry += entry_header + payload
        yield pos, entries
        pos = blob_end


def _pick_fillers(data: bytearray, start: int, size: int) -> None:
    smallest: dict[int, tuple[int, int, int, int]] = {}
    for _, entries in _entries(data, start, size):
        for kind, arch, at, entry_header, _payload in entries:
            decompressed = struct.unpack_from("<Q", data, at + 56)[0]
            if kind == CUBIN and (arch not in smallest or decompressed < smallest[arch][0]):
                smallest[arch] = (decompressed, at, entry_header, struct.unpack_from("<I", data, at + 16)[0])
    for arch, (_, at, entry_header, compressed) in smallest.items():
        FILLERS[arch] = _zstd(bytes(data[at + entry_header:at + entry_header + compressed]), "-d")


def fatbin_section(path: Path) -> tuple[int, int]:
    """File offset and size of the .nv_fatbin section (readelf, to avoid an ELF parser dependency)."""
    out = subprocess.run(["readelf", "-S", "-W", str(path)], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if ".nv_fatbin" in line:
            fields = line.split("]", 1)[1].split()
            return int(fields[3], 16), int(fields[4], 16)
    raise SystemExit(f"{path}: no .nv_fatbin section")


def keep_only(data: bytearray, start: int, size: int, arch: int) -> tuple[int, int, list[int]]:
    """Swap every cubin but `arch`'s for a filler in fatbins that have one; (blobs, bytes dropped, arches)."""
    _pick_fillers(data, start, size)
    blobs, blanked, seen = 0, 0, set()
    for _, entries in _entries(data, start, size):
        blobs += 1
        seen.update(a for _, a, *_ in entries)
        if not any(k == CUBIN and a == arch for k, a, *_ in entries):
            continue
        for kind, entry_arch, at, entry_header, payload in entries:
            if kind == CUBIN and entry_arch == arch:
                continue
            # header fields: +16 compressed size (u32), +56 decompressed size (u64, kept as it is)
            frame = filler_frame(entry_arch, struct.unpack_from("<Q", data, at + 56)[0])
            if len(frame) > payload:
                continue  # never the case in practice: keep the original rather than overflow
            body = at + entry_header
            data[body:body + payload] = frame + bytes(payload - len(frame))
            struct.pack_into("<I", data, at + 16, len(frame))
            blanked += payload - len(frame)
    return blobs, blanked, sorted(seen)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("wheel", type=Path)
    p.add_argument("--arch", type=int, default=90, help="SM to keep (90 = Hopper: H100, H200)")
    p.add_argument("--out", type=Path, required=True, help="the .tar.zst to write")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with zipfile.ZipFile(args.wheel) as wheel:
            wheel.extractall(root, [n for n in wheel.namelist() if n.startswith("onnxruntime/")])
        (root / "onnxruntime/capi/libonnxruntime_providers_tensorrt.so").unlink(missing_ok=True)
        lib = root / "onnxruntime/capi/libonnxruntime_providers_cuda.so"
        data = bytearray(lib.read_bytes())
        blobs, blanked, arches = keep_only(data, *fatbin_section(lib), args.arch)
        lib.write_bytes(data)
        print(f"{blobs} fatbins, architectures {arches}: blanked {blanked / 1e6:.0f} MB of cubins not for sm_{args.arch}")
        tmp_out = args.out.with_suffix(".part")
        tar = subprocess.Popen(["tar", "-C", str(root), "-cf", "-", "onnxruntime"], stdout=subprocess.PIPE)
        with open(tmp_out, "wb") as sink:
            subprocess.run(["zstd", "-q", "-6", "--long=27", "-T0", "-c"], stdin=tar.stdout, stdout=sink, check=True)
        if tar.wait() != 0:
            raise SystemExit("tar failed")
        shutil.move(tmp_out, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
