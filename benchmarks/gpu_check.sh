#!/usr/bin/env bash
# The GPU check (issue 15) in one command, for ONE try on a bare lent H200 machine (run from the repository root):
#
#   bash benchmarks/gpu_check.sh                       # on the GPU machine; results under $OUT
#   bash benchmarks/gpu_check.sh --device cpu --n 64   # the dry run (CI: tests/test_gpu.py)
#   bash benchmarks/gpu_check.sh --fetch-wheels DIR    # here, once: download the wheels to carry into DIR
#
# Wheels: fetched once into benchmarks/results/cache/wheels (git-ignored: give that path to the device tool's
# `carry`); also looked for in $WHEELS, ./wheels and ./shared/wheels. The image has torch, numpy, scipy, pandas,
# pyarrow, h5py, xarray, safetensors, tqdm, pyyaml, matplotlib; dask, distributed, dask-cuda (+ pure-Python
# needs), zarr, numcodecs, astropy are carried (no bokeh); only what `import` cannot find is installed
# (--no-index: nothing is downloaded there). cuda-core / cuda-bindings / nvidia-ml-py come from the image
# (recorded in $OUT/image.txt, never replaced).
#
# Then `python -m benchmarks.gpu --check`: stages env, store, end to end (`survey-infer run --cluster cuda`,
# T = 50), network, screening, preprocess, decode + CRC, `pytest -m gpu` — each in its own process group under
# a time box, results written after each stage ($OUT/stage-*.json, $OUT/gpu.json). The whole command, install
# included, stays inside GPU_CHECK_TOTAL_S (470 s): the stages get what the install left.
# Every problem is one line starting with "gpu-check:" on stderr; exit status 0 only when every stage ran ok.
set -u
cd "$(dirname "$0")/.."
TOTAL="${GPU_CHECK_TOTAL_S:-470}"
export OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
say() { echo "gpu-check: $*" | tee -a "$OUT/check.log" >&2; }
# dask-cuda pins dask/distributed through rapids-dask-dependency (which also wants bokeh: skipped, --no-deps);
# zarr, numcodecs, astropy: the versions CI runs here
DASK_CUDA="dask-cuda==26.10.*"
RAPIDS_DASK="rapids-dask-dependency==26.10.*"
DASK_PINS="dask==2026.7.1 distributed==2026.7.1"
CARRIED="$DASK_PINS zarr==3.1.6 numcodecs==0.16.6 astropy==8.0.2"
# the GPU machine's python3 (KINDS.md: Python 3.12.3 in /opt/torch/.venv, x86-64): wheels for it, not for here
TARGET_PY="${GPU_CHECK_PYTHON_VERSION:-3.12}"
PLATFORMS="--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_28_x86_64 --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64"

if [ "${1:-}" = "--fetch-wheels" ]; then
    dest="${2:-benchmarks/results/cache/wheels}"
    mkdir -p "$dest"
    target="--only-binary=:all: --python-version $TARGET_PY --implementation cp $PLATFORMS"
    python3 -m pip download -q $target --dest "$dest" $CARRIED \
        && python3 -m pip download -q --no-deps $target --dest "$dest" "$DASK_CUDA" "$RAPIDS_DASK" \
        || { say "pip download into $dest failed"; exit 2; }
    rm -f "$dest"/numpy-*.whl  # the image has numpy (2.5 there): never replace it under torch
    ls "$dest"
    du -sh "$dest"
    exit 0
fi

gpu=1
case " $* " in *" --device cpu "*) gpu=0;; esac
WHEELS_FOUND=""
for d in "${WHEELS:-}" "$PWD/benchmarks/results/cache/wheels" "$PWD/wheels" "$PWD/shared/wheels"; do
    if [ -n "$d" ] && ls "$d"/*.whl >/dev/null 2>&1; then WHEELS_FOUND="$d"; break; fi
done
missing() {  # packages whose module cannot be imported
    local out=""
    for spec in dask:dask distributed:distributed zarr:zarr numcodecs:numcodecs astropy:astropy; do
        python3 -c "import ${spec##*:}" 2>/dev/null || out="$out ${spec%%:*}"
    done
    [ $gpu = 1 ] && ! python3 -c "import dask_cuda" 2>/dev/null && out="$out dask-cuda"
    echo "$out"
}
need="$(missing)"
install_status="nothing to install"
if [ -n "$need" ]; then
    if [ -z "$WHEELS_FOUND" ]; then
        install_status="missing:$need; no wheel folder (benchmarks/results/cache/wheels, \$WHEELS, ./wheels)"
        say "$install_status: stages that need them will fail"
    else
        say "installing from $WHEELS_FOUND:$need"
        plain="$(echo "$need" | sed 's/ dask-cuda//')"
        : >"$OUT/pip.log"
        if [ -n "${plain// }" ]; then  # pip keeps what the image has when it satisfies the requirements
            timeout -k 5 120 python3 -m pip install -q --root-user-action=ignore --disable-pip-version-check --no-index --find-links "$WHEELS_FOUND" $plain \
                >>"$OUT/pip.log" 2>&1
        fi
        case "$need" in *dask-cuda*)
            timeout -k 5 60 python3 -m pip install -q --root-user-action=ignore --disable-pip-version-check --no-index --no-deps "$WHEELS_FOUND"/dask_cuda-*.whl \
                "$WHEELS_FOUND"/rapids_dask_dependency-*.whl >>"$OUT/pip.log" 2>&1;;
        esac
        still="$(missing)"
        if [ -n "$still" ]; then  # e.g. a read-only environment: every carried wheel into a folder of our own
            say "install into $(python3 -c 'import sys; print(sys.prefix)') failed ($(grep -v "^WARNING" "$OUT/pip.log" | tail -n 1 \
                2>/dev/null)); trying --target /tmp/gpu-check-site"
            timeout -k 5 120 python3 -m pip install -q --root-user-action=ignore --disable-pip-version-check --no-index --no-deps --no-compile --target /tmp/gpu-check-site \
                "$WHEELS_FOUND"/*.whl >>"$OUT/pip.log" 2>&1 && export PYTHONPATH="/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}"
            still="$(missing)"
        fi
        if [ -z "$still" ]; then install_status="installed:$need"; else
            install_status="install failed (still missing:$still; see pip.log)"
            say "$install_status: $(grep -v "^WARNING" "$OUT/pip.log" | tail -n 1 2>/dev/null)"
        fi
    fi
fi
python3 - "$install_status" "$WHEELS_FOUND" "$SECONDS" >"$OUT/install.json" <<'PY'
import json, sys
print(json.dumps({"status": sys.argv[1], "wheels": sys.argv[2] or None, "seconds": int(sys.argv[3])}))
PY
python3 - >"$OUT/image.txt" 2>&1 <<'PY'
from importlib import metadata
for n in ("torch", "cuda-core", "cuda-bindings", "nvidia-ml-py", "pynvml", "dask", "distributed", "dask-cuda",
          "zarr", "numcodecs", "astropy", "psutil"):
    try:
        print(n, metadata.version(n))
    except metadata.PackageNotFoundError:
        print(n, "absent")
PY
export GPU_CHECK_INSTALLED="$install_status"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"
left=$(( TOTAL - SECONDS - 10 ))
if [ "$left" -lt 30 ]; then say "only $left s left of $TOTAL s after installing: no stage run"; exit 1; fi
# the user's own --budget-s (later on the line) wins over this one
timeout -k 10 $(( left + 8 )) python3 -m benchmarks.gpu --check --out "$OUT" --budget-s "$left" "$@"
rc=$?
[ $rc = 124 ] || [ $rc = 137 ] && say "the check ran past $TOTAL s and was stopped; stages done so far are in $OUT"
exit $rc
