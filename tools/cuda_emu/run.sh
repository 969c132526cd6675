#!/usr/bin/env bash
# Runs fastnn's CUDA kernels (csrc/cuda/*.cu) on the CPU, for machines without a GPU: each .cu
# is rewritten to plain C++ (convert.py turns kernel<<<grid, block>>>(args) into a call of the
# emulator), compiled against cuda_runtime.h here (every block runs on blockDim std::threads,
# __syncthreads is a real barrier, warp shuffles go through a buffer; cudaMallocAsync is
# malloc), with AddressSanitizer and UBSan, and driver.cpp checks every kernel against naive
# double references: all transposes and layouts of gemm on both tile configurations, split K,
# aliasing, dense with x_rows, relu/bias, softmax and cross-entropy (label types, bad labels),
# the optimizers (bit for bit). Buffers hold exactly the elements a view spans, so a read or
# write past an edge tile is an ASan error. Then the real bindings are built over the emulated
# kernels and driven through fastnn.ops (bindings_check.py). Not covered: the real memory
# model, timing, CuPy and streams, alignment faults beyond what UBSan's check sees.
#
# Usage: tools/cuda_emu/run.sh        (about 1 minute on 2 cores)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$here/../.."
work="${TMPDIR:-/tmp}/fastnn-cuda-emu"
mkdir -p "$work/include"
cp "$here/cuda_runtime.h" "$work/include/"
flags=(-std=c++20 -O1 -g -pthread -fPIC -ffp-contract=off -fsanitize=address,undefined
       -fno-sanitize-recover=undefined -I"$work/include" -I"$repo/csrc" -include cuda_runtime.h)
for f in gemm elementwise softmax_xent optim device; do
  python3 "$here/convert.py" "$repo/csrc/cuda/$f.cu" "$work/$f.cpp"
  g++ "${flags[@]}" -c "$work/$f.cpp" -o "$work/$f.o" &
done
wait
g++ "${flags[@]}" "$here/driver.cpp" "$work"/*.o -o "$work/driver"
ASAN_OPTIONS=detect_leaks=0 "$work/driver"

# The real bindings (bindings_cuda.cpp) over the emulated kernels, as fastnn._cuda, driven
# through fastnn.ops by bindings_check.py (needs fastnn installed, e.g. the editable build).
py="${PYTHON:-python3}"
ext="$("$py" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")"
read -r -a pyinc <<<"$("$py" -m pybind11 --includes)"
g++ "${flags[@]}" -shared -fvisibility=hidden "${pyinc[@]}" -DFASTNN_VERSION='"emu"' "$repo/csrc/bindings_cuda.cpp" \
  "$work"/{gemm,elementwise,softmax_xent,optim,device}.o -o "$work/_cuda$ext"
preload="$(g++ -print-file-name=libasan.so):$(g++ -print-file-name=libubsan.so)"
ASAN_OPTIONS=detect_leaks=0 LD_PRELOAD="$preload" "$py" "$here/bindings_check.py" "$work/_cuda$ext"
