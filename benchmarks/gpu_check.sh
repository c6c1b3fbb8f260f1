#!/usr/bin/env bash
# The GPU check of issue 15 in one command, for a bare lent H200 machine (run from the repository root):
#
#   bash benchmarks/gpu_check.sh                       # on the GPU machine; results under $OUT
#   bash benchmarks/gpu_check.sh --device cpu --n 64   # the dry run (CI: tests/test_gpu.py)
#   bash benchmarks/gpu_check.sh --fetch-wheels DIR    # here, once: download the wheels to carry into DIR
#
# 1. installs, from carried wheels (WHEELS, default ./wheels), only what the image lacks: the image has torch,
#    numpy, scipy, pandas, pyarrow, h5py, xarray, safetensors, tqdm, pyyaml, matplotlib; dask, distributed,
#    dask-cuda (+ pure-Python needs), zarr, numcodecs, astropy are carried (no bokeh; --fetch-wheels prints the size).
#    cuda-core / cuda-bindings / nvidia-ml-py are taken from the image when present (checked, never replaced).
# 2. runs `python -m benchmarks.gpu --check "$@"`: stages env, pytest -m gpu, store, decode+CRC, preprocess,
#    network (hot path, large B, IEEE vs TF32, kernel-busy time), end to end (`survey-infer run --cluster cuda`,
#    T = 50); each stage time-boxed, results written after each under $OUT (stage-*.json, gpu.json); whole < 8 min.
set -u
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
WHEELS="${WHEELS:-$PWD/wheels}"
# dask-cuda pins dask/distributed through rapids-dask-dependency (which also wants bokeh: skipped, --no-deps)
DASK_CUDA="dask-cuda==26.10.*"
RAPIDS_DASK="rapids-dask-dependency==26.10.*"
DASK_PINS="dask==2026.7.1 distributed==2026.7.1"
CARRIED="$DASK_PINS zarr numcodecs astropy"

if [ "${1:-}" = "--fetch-wheels" ]; then
    dest="${2:?--fetch-wheels DIR}"
    python3 -m pip download -q --only-binary=:all: --dest "$dest" $CARRIED \
        && python3 -m pip download -q --no-deps --only-binary=:all: --dest "$dest" "$DASK_CUDA" "$RAPIDS_DASK" \
        || { echo "gpu_check.sh: pip download into $dest failed" >&2; exit 2; }
    rm -f "$dest"/numpy-*.whl  # the image has numpy
    ls "$dest"
    du -sh "$dest"
    exit 0
fi

need=""
for spec in dask:dask distributed:distributed zarr:zarr numcodecs:numcodecs astropy:astropy; do
    pkg="${spec%%:*}"; mod="${spec##*:}"
    python3 -c "import $mod" 2>/dev/null || need="$need $pkg"
done
gpu=1
case " $* " in *" --device cpu "*) gpu=0;; esac
installed=""
if [ -n "$need" ] || { [ $gpu = 1 ] && ! python3 -c "import dask_cuda" 2>/dev/null; }; then
    if [ -d "$WHEELS" ]; then
        echo "gpu_check.sh: installing from $WHEELS:$need$([ $gpu = 1 ] && echo " dask-cuda")" >&2
        # --no-index: nothing is fetched; pip keeps what the image already has (torch, numpy, cuda-*...)
        ok=1
        if [ -n "$need" ]; then
            python3 -m pip install --no-index --find-links "$WHEELS" $need >"$OUT/pip.log" 2>&1 || ok=0
        fi
        if [ $gpu = 1 ] && [ $ok = 1 ]; then
            python3 -m pip install --no-index --no-deps "$WHEELS"/dask_cuda-*.whl "$WHEELS"/rapids_dask_dependency-*.whl \
                >>"$OUT/pip.log" 2>&1 || ok=0
        fi
        if [ $ok = 1 ]; then installed="$need dask-cuda"; else
            echo "gpu_check.sh: pip install from $WHEELS failed (see $OUT/pip.log)" >&2; fi
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
