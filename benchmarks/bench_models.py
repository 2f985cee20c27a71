"""Network throughput of trained models on one device: torch eager (fp32, and fp16 autocast on a GPU)
and ONNX Runtime (its CUDA provider on a GPU, where onnxruntime-gpu is installed), at batch 1 and 16.

Times the network alone on inputs of the model's own size (preprocessing and the resize back are
`polypseg benchmark`'s job), after a warm-up, synchronising the GPU around each call; prints a table and
writes it to OUT/timing.md and OUT/timing.csv (atomically).

    python benchmarks/bench_models.py realtime runs/accurate --device cuda --batch 1 16 -o gpu-results
    python benchmarks/bench_models.py realtime --device cpu --batch 1 2 --iterations 3 -o scratch/timing
"""

from __future__ import annotations

import argparse
import csv
import io
import time
from pathlib import Path

import numpy as np
import torch

from polypseg.bench import cpu_name
from polypseg.files import atomic_write_text
from polypseg.model import load_checkpoint
from polypseg.predict import resolve_model
from polypseg.progress import text_table
from polypseg.runtime import export_bytes, ort_session, torch_device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({cpu_name()}, {torch.get_num_threads()} threads)"


def timed(call, x, iterations: int, warmup: int, device: torch.device) -> np.ndarray:
    """Milliseconds per call of ``call(x)``; the GPU is synchronised before and after each."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        call(x)
    ms = []
    for _ in range(iterations):
        sync()
        t0 = time.perf_counter()
        call(x)
        sync()
        ms.append((time.perf_counter() - t0) * 1000)
    return np.asarray(ms)


def torch_runs(model, device: torch.device):
    """(name, call on a torch tensor) for each torch variant the device has."""
    def eager(x):
        with torch.inference_mode():
            return model(x)

    def half(x):
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
            return model(x)

    yield "torch eager fp32", eager
    if device.type == "cuda":
        yield "torch eager fp16 autocast", half


def ort_run(model, cfg, device: torch.device):
    """(name, call on a numpy array) for ONNX Runtime on the device, or (name, reason) when it cannot."""
    try:
        session = ort_session(export_bytes(model, cfg), str(device))
    except Exception as err:  # PolypsegError for a missing provider, ImportError without onnxruntime
        return "onnxruntime", f"not run: {err}"
    provider = session.get_providers()[0].removesuffix("ExecutionProvider")
    return f"onnxruntime {provider}", lambda x: session.run(None, {"image": x})


def bench_model(name: str, device: torch.device, batches: list[int], iterations: int, warmup: int) -> list[dict]:
    weights = resolve_model(name)
    model, cfg = load_checkpoint(weights, device=device)
    runs = [*torch_runs(model, device), ort_run(model, cfg, device)]  # one ONNX export: its batch is dynamic
    model.to(device)  # export_bytes moves the model to the CPU
    rows = []
    for batch in batches:
        x = torch.randn(batch, cfg.in_channels, cfg.height, cfg.width, device=device)
        for runtime_name, call in runs:
            row = dict(model=Path(name).name, encoder=cfg.encoder, input=f"{cfg.height}x{cfg.width}", batch=batch,
                       runtime=runtime_name)
            if isinstance(call, str):
                rows.append(dict(row, median_ms="", images_per_s="", note=call))
                continue
            arg = x.cpu().numpy() if runtime_name.startswith("onnxruntime") else x
            ms = timed(call, arg, iterations, warmup, device)
            rows.append(dict(row, median_ms=round(float(np.median(ms)), 2),
                             images_per_s=round(batch * 1000 / float(np.median(ms)), 1), note=""))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="shipped model names, run folders or checkpoints")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("-o", "--output", required=True, help="folder for timing.md and timing.csv")
    args = p.parse_args(argv)
    device = torch_device(args.device)
    rows = [r for m in args.models for r in bench_model(m, device, args.batch, args.iterations, args.warmup)]
    header = (f"{device_name(device)}; torch {torch.__version__}; network only, random input of the model's size; "
              f"median of {args.iterations} calls after {args.warmup} warm-up")
    table = "\n".join(text_table([list(rows[0])] + [[str(v) for v in r.values()] for r in rows]))
    print(header + "\n" + table)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "timing.csv", buf.getvalue())
    atomic_write_text(out / "timing.md", f"{header}\n\n```\n{table}\n```\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
