#!/usr/bin/env bash
# The CUDA 13.0 toolkit `make build-cuda` needs, from NVIDIA's wheels on PyPI
# (nvcc, headers, cuBLAS, cuRAND, NVRTC; cuFFT and cuDNN for ONNX Runtime's CUDA
# provider), laid out as a CUDA root in DIR:
#   DIR/bin/nvcc, DIR/include, DIR/nvvm   the compiler candle's kernels build with
#   DIR/lib64/lib*.so                     what the linker and cudarc look for
#   DIR/lib                               the runtime libraries (LD_LIBRARY_PATH)
# 13.0, not the newest: the PTX it writes must be one the GPU's driver can JIT
# (580 drivers take CUDA 13.0's), and it matches onnxruntime-gpu's CUDA.
# libcuda.so, the driver, is the machine's own: build where the GPU is.
#
#   scripts/setup-cuda.sh DIR
set -euo pipefail
dir="$1"
python="${PYTHON:-python3}"
driver="$(ldconfig -p | awk '/libcuda\.so\.1 /{print $NF; exit}')"
if [ -z "$driver" ]; then
  echo "no libcuda.so.1 (the NVIDIA driver) on this machine: build on the GPU machine" >&2
  echo "(or install the driver's library, Debian: libcuda1 from non-free)" >&2
  exit 1
fi
rm -rf "$dir"
"$python" -m venv "$dir/venv"
"$dir/venv/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir \
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-cccl==13.0.85 \
  nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 nvidia-cufft==12.0.0.61 \
  nvidia-cudnn-cu13==9.13.0.50
cu="$("$dir/venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')"
for d in bin include nvvm lib; do ln -s "$cu/$d" "$dir/$d"; done
# cuDNN comes as its own package; its libraries join the others on the path.
cudnn="$("$dir/venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cudnn", "lib"))')"
mkdir -p "$dir/lib64"
for lib in "$cu"/lib/lib*.so.* "$cudnn"/lib*.so.*; do
  base="$(basename "$lib")"
  ln -sf "$lib" "$dir/lib64/${base%%.so.*}.so"
  ln -sf "$lib" "$dir/lib64/$base"
done
ln -sf "$driver" "$dir/lib64/libcuda.so"
"$dir/bin/nvcc" --version | tail -1 >&2
