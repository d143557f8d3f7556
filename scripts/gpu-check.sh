#!/usr/bin/env bash
# The GPU check of the cuda build, on a machine with an NVIDIA GPU, from what
# scripts/gpu-pack.sh packed into .gpu/: candle on CUDA against candle on the CPU
# for the safetensors MLP (max abs diff <= 1e-5) and MiniLM (cosine >= 0.9999
# on 50 sentences, and against sentence-transformers on the GPU where python3
# has it); ONNX Runtime's CUDA provider for the ONNX MLP when .gpu-ort* came
# too; then MiniLM sentences/s at concurrency 32 and one sentence's p50, GPU
# and CPU. The CUDA libraries are the nvidia-* wheels' of the machine's python3.
# Writes $OUT/gpu-report.txt (or ./gpu-report.txt). Exit 1 on a failed check.
# DEVICE=cpu runs the same steps with the "gpu" copies on the CPU: a dry run of
# the script itself on a machine without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-.}"
W=/tmp/switchyard-gpu && rm -rf "$W" && mkdir -p "$W/bin" "$W/models"
xz -dc .gpu/switchyard.xz > "$W/bin/switchyard"
xz -dc .gpu/switchyard-loadtest.xz > "$W/bin/switchyard-loadtest"
chmod +x "$W/bin/"*
xz -dc .gpu/ort.tar.xz | tar -C "$W/bin" -xf -
if ls .gpu-ort1/.gpu-ort-part-* >/dev/null 2>&1; then
  cat .gpu-ort*/.gpu-ort-part-* | xz -dc | tar -C "$W/bin" -xf -
fi
nv="$(python3 -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "lib"))' 2>/dev/null || true)"
cudnn="$(python3 -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cudnn", "lib"))' 2>/dev/null || true)"
export LD_LIBRARY_PATH="$nv:$cudnn:${LD_LIBRARY_PATH:-}"
report() { echo "$*" | tee -a "$OUT/gpu-report.txt"; }
: > "$OUT/gpu-report.txt"
report "$(nvidia-smi -L 2>/dev/null | head -1 || true) device ${DEVICE:-cuda:0}; $(date -u +%FT%TZ)"
for dev in cpu gpu; do
  d=$([ $dev = gpu ] && echo "${DEVICE:-cuda:0}" || echo cpu)
  cp -r models/mlp_safetensors "$W/models/mlp_$dev"
  sed -i "1i device = \"$d\"" "$W/models/mlp_$dev/config.toml"
  mkdir -p "$W/models/minilm_$dev/1" && cp -r .gpu/minilm/. "$W/models/minilm_$dev/1/"
  { echo "device = \"$d\""; cat models/minilm/config.toml; } > "$W/models/minilm_$dev/config.toml"
  if [ -f "$W/bin/libonnxruntime_providers_cuda.so" ]; then
    cp -r models/mlp "$W/models/onnx_$dev"
    sed -i "1i device = \"$d\"" "$W/models/onnx_$dev/config.toml"
  fi
done
ORT_DYLIB_PATH="$W/bin/libonnxruntime.so" "$W/bin/switchyard" serve --models "$W/models" \
  --http 127.0.0.1:18900 --grpc 127.0.0.1:18901 > "$OUT/gpu-server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 600); do curl -sf -o /dev/null http://127.0.0.1:18900/v2/health/ready && break; sleep 0.1; done
curl -s -X POST http://127.0.0.1:18900/v2/repository/index | tee -a "$OUT/gpu-report.txt"; echo | tee -a "$OUT/gpu-report.txt"
python3 - "$OUT/gpu-report.txt" <<'PY'
import json, sys, urllib.request, numpy as np
rep = open(sys.argv[1], "a")
def say(*a):
    print(*a); print(*a, file=rep); rep.flush()
def infer(model, inputs):
    req = urllib.request.Request(f"http://127.0.0.1:18900/v2/models/{model}/infer",
                                 data=json.dumps({"inputs": inputs}).encode(), headers={"Content-Type": "application/json"})
    out = json.loads(urllib.request.urlopen(req, timeout=120).read())["outputs"][0]
    return np.asarray(out["data"], dtype=np.float64).reshape(out["shape"])
ok = True
x = np.random.default_rng(1).normal(size=(64, 16)).astype(np.float32)
pairs = [("mlp_cpu", "mlp_gpu")]
idx = json.loads(urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:18900/v2/repository/index", data=b"{}")).read())
if any(m["name"] == "onnx_gpu" for m in idx):
    pairs.append(("onnx_cpu", "onnx_gpu"))
for cpu, gpu in pairs:
    inp = [{"name": "input", "datatype": "FP32", "shape": [64, 16], "data": x.ravel().tolist()}]
    d = float(np.abs(infer(cpu, inp) - infer(gpu, inp)).max())
    ok &= d <= 1e-5
    say(f"{gpu} vs {cpu}: max abs diff {d:.2e} (<= 1e-5: {d <= 1e-5})")
texts = [l.strip() for l in open("tests/fixtures/sentences.txt") if l.strip()]
def embed(model):  # in requests of 25: the encoder's max_batch_size is 32
    return np.concatenate([infer(model, [{"name": "text", "datatype": "BYTES", "shape": [len(texts[i:i + 25])],
                                          "data": texts[i:i + 25]}]) for i in range(0, len(texts), 25)])
e_cpu, e_gpu = embed("minilm_cpu"), embed("minilm_gpu")
cos = lambda a, b: (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
c = cos(e_cpu, e_gpu).min()
ok &= c >= 0.9999
say(f"minilm_gpu vs minilm_cpu: min cosine {c:.6f} over {len(texts)} sentences (>= 0.9999: {c >= 0.9999})")
try:
    from sentence_transformers import SentenceTransformer
    import torch
    on = "cuda" if torch.cuda.is_available() else "cpu"
    # F32, as the server computes: the folder's weights are F16.
    st = SentenceTransformer("/tmp/switchyard-gpu/models/minilm_gpu/1", device=on,
                             model_kwargs={"dtype": torch.float32})
    c = cos(st.encode(texts, convert_to_numpy=True).astype(np.float64), e_gpu).min()
    ok &= c >= 0.9999
    say(f"minilm_gpu vs sentence-transformers ({on}): min cosine {c:.6f} (>= 0.9999: {c >= 0.9999})")
except ImportError:
    say("sentence-transformers: not installed here, skipped")
sys.exit(0 if ok else 1)
PY
for m in minilm_gpu minilm_cpu; do
  for c in 32 1; do
    "$W/bin/switchyard-loadtest" --url http://127.0.0.1:18900 --model "$m" --texts tests/fixtures/sentences.txt \
      --concurrency "$c" --duration 8 --warmup 2 --json > "$W/lt.json"
    report "$m c=$c: $(python3 -c "import json; r=json.load(open('$W/lt.json')); print(f\"{r['infer_per_s']:.1f} sentences/s, p50 {r['p50_us']} us, errors {r['errors']}\")")"
  done
done
