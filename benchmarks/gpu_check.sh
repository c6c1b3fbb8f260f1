#!/usr/bin/env bash
# The GPU check of issue 15 in one command, for a bare lent H200 machine (run from the repository root):
#
#   bash benchmarks/gpu_check.sh                       # on the GPU machine; results under $OUT
#   bash benchmarks/gpu_check.sh --device cpu --n 64   # the dry run (CI: tests/test_gpu.py)
#   bash benchmarks/gpu_check.sh --fetch-wheels DIR    # here, once: download the wheels to carry into DIR
#
# 1. installs, from carried wheels (WHEELS, default ./wheels), only what the image lacks: the image has torch,
#    numpy, scipy, pandas, pyarrow, h5py, xarray, safetensors, tqdm, pyyaml, matplotlib; dask, distributed,
#    dask-cuda (+ pure-Python needs), zarr, numcodecs, astropy are carried (~18.5 MB; no bokeh).
#    cuda-core / cuda-bindings / nvidia-ml-py are taken from the image when present (checked, never replaced).
# 2. runs `python -m benchmarks.gpu --check "$@"`: stages env, pytest -m gpu, store, decode+CRC, preprocess,
#    network (hot path, large B, IEEE vs TF32, kernel-busy time), end to end (`survey-infer run --cluster cuda`,
#    T = 50); each stage time-boxed, results written after each under $OUT (stage-*.json, gpu.json); whole < 8 min.
set -u
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
WHEELS="${WHEELS:-$PWD/wheels}"
CARRIED="dask distributed dask-cuda zarr numcodecs astropy"

if [ "${1:-}" = "--fetch-wheels" ]; then
    dest="${2:?--fetch-wheels DIR}"
    # pure-Python needs of the carried packages; the image's own packages are not downloaded
    python3 -m pip download --only-binary=:all: --dest "$dest" $CARRIED \
        || { echo "gpu_check.sh: pip download into $dest failed" >&2; exit 2; }
    du -sh "$dest"
    exit 0
fi

need=""
for spec in dask:dask distributed:distributed dask-cuda:dask_cuda zarr:zarr numcodecs:numcodecs astropy:astropy; do
    pkg="${spec%%:*}"; mod="${spec##*:}"
    python3 -c "import $mod" 2>/dev/null || need="$need $pkg"
done
case " $* " in *" --device cpu "*) need="$(echo "$need" | sed 's/ dask-cuda//')";; esac
installed=""
if [ -n "$need" ]; then
    if [ -d "$WHEELS" ]; then
        echo "gpu_check.sh: installing from $WHEELS:$need" >&2
        # --no-index: nothing is fetched; pip keeps what the image already has (torch, numpy, cuda-*...)
        if python3 -m pip install -q --no-index --find-links "$WHEELS" $need >"$OUT/pip.log" 2>&1; then
            installed="$need"
        else
            echo "gpu_check.sh: pip install from $WHEELS failed (see $OUT/pip.log)" >&2
        fi
    else
        echo "gpu_check.sh: missing$need and no wheel folder $WHEELS (set WHEELS=...)" >&2
    fi
fi
python3 - >"$OUT/image.txt" 2>&1 <<'PY'
from importlib import metadata
for n in ("torch", "cuda-core", "cuda-bindings", "nvidia-ml-py", "pynvml", "dask", "distributed", "dask-cuda",
          "zarr", "numcodecs", "astropy"):
    try:
        print(n, metadata.version(n))
    except metadata.PackageNotFoundError:
        print(n, "absent")
PY
export GPU_CHECK_INSTALLED="$installed"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"
exec timeout -k 10 475 python3 -m benchmarks.gpu --check --out "$OUT" "$@"
