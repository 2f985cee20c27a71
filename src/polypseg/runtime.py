"""The inference runtime: the torch and ONNX Runtime backends, ONNX sessions and metadata, in-memory ONNX
export and per-call thread settings. ``predict``, ``video``, ``export``, ``evaluate`` and ``bench`` call
down into this module; it imports nothing of theirs.

A backend maps a normalised float32 ``N x 3 x H x W`` input (``H``, ``W`` multiples of 32) to float32
``N x H x W`` polyp probabilities and, for models with an image-level head, float32 ``N`` polyp-frame
probabilities (else None). An ONNX file written by polypseg outputs probabilities (the sigmoid is
part of the graph; a second output ``score`` for the head) and carries the run's config and the checkpoint's sha256 in its metadata, so the file
alone is enough to predict and a stale export is recognised.

Exporter: the TorchScript exporter (``dynamo=False``). With torch 2.14 both exporters give ONNX files
of the same speed for smp models with dynamic H/W, but the dynamo exporter took minutes of CPU for
DeepLabV3+/EfficientNet-Lite0 where TorchScript takes about 2 s; dynamo is the fallback for torch
builds without the TorchScript exporter.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

from .config import Config
from .errors import PolypsegError
from .model import load_checkpoint, read_checkpoint_meta, split_output

BACKENDS = ("torch", "onnxruntime")
# which ONNX file the onnxruntime backend runs (onnx_backend): fp32, int8, or int8 where there is one
PRECISIONS = ("fp32", "int8", "auto")
OPSET = 17
# Keys of the metadata every ONNX file written by polypseg carries.
ONNX_CONFIG_KEY = "polypseg.config"
ONNX_SHA256_KEY = "polypseg.checkpoint_sha256"
INT8_KEY = "polypseg.int8"  # set in int8 files: how they were quantised
# ONNX Runtime's intra-op threads spin (busy-wait) between ops by default; polypseg turns that off.
# `polypseg benchmark`, shipped model, 200-frame clip, 2 cores busy with a training run (load ~6-8), fps of
# the whole video pipeline, 4 alternating runs each, median (min-max): 2 threads spinning 7.1 (6.9-7.4),
# 2 threads not spinning 17.4 (14.3-22.2), 1 thread 12.9 either way. Spinning threads hold both cores
# while they wait, starving the decoder, the encoder and the other process, and every spinning thread
# descheduled mid-op stalls the op. A quiet machine loses a little to thread wake-ups (the 2-thread
# spinning figure of 27.6-42.5 fps in docs was also the most unstable), so off is the robust choice.
SPIN_DEFAULT = False


def cpu_cores() -> int:
    """CPU cores this process may run on (not the machine's total under a container's affinity mask)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` for the ``with`` block only (None: left as it is).

    torch's setting is process-wide: a library call that changed it for good would slow down or
    oversubscribe whatever else the caller runs.
    """
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def torch_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise PolypsegError(f"Unknown device '{device}'. Use cpu, cuda or cuda:N.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PolypsegError(f"Device '{device}' was asked for but torch sees no CUDA GPU here. Use --device cpu.")
    return dev


# ---------------------------------------------------------------------------------------------------
# ONNX Runtime sessions


def ort_session(model: str | Path | bytes, device: str = "cpu", threads: int | None = None,
                spin: bool | None = None):
    """An ONNX Runtime session tuned for one-frame latency: all graph optimisations, sequential
    execution, ``threads`` intra-op threads (default: every core this process may use); ``spin``: whether
    those threads busy-wait for work (default SPIN_DEFAULT)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise PolypsegError(
            "The onnxruntime backend needs ONNX Runtime: pip install 'polypseg[onnx]'."
        ) from None
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or cpu_cores()
    opts.inter_op_num_threads = 1
    if not (SPIN_DEFAULT if spin is None else spin):
        # Spinning threads burn a core while they wait; when the decoder, the encoder or another process
        # needs that core, they slow everyone down (see the benchmark numbers at SPIN_DEFAULT).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # errors only: ORT warns about every initialiser it folds
    dev = torch_device(device)
    providers: list = ["CPUExecutionProvider"]
    if dev.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise PolypsegError(
                f"Device '{device}' with --backend onnxruntime needs onnxruntime-gpu (this onnxruntime has "
                f"{', '.join(ort.get_available_providers())}). Install onnxruntime-gpu, or use --backend torch."
            )
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": dev.index or 0}))
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, opts, providers=providers)
    except Exception as err:  # ORT raises its own exception types for unreadable or invalid files
        raise PolypsegError(
            f"ONNX Runtime cannot load the model {'(in memory)' if isinstance(model, bytes) else model}: {err}. "
            "Export it again with `polypseg export`."
        ) from None


def onnx_metadata(session) -> dict[str, str]:
    return dict(session.get_modelmeta().custom_metadata_map)


# ---------------------------------------------------------------------------------------------------
# in-memory ONNX export


class Probabilities(torch.nn.Module):
    """The network with its sigmoid: the ONNX file outputs probabilities (and the head's, if any)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        logits, head = split_output(self.model(image))
        return torch.sigmoid(logits) if head is None else (torch.sigmoid(logits), torch.sigmoid(head))


def _output_names(module: Probabilities) -> list[str]:
    return ["prob", "score"] if getattr(module.model, "classification_head", None) is not None else ["prob"]


def _torchscript_export(module: Probabilities, sample: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    names = _output_names(module)
    dynamic = {"image": {0: "batch", 2: "height", 3: "width"}, "prob": {0: "batch", 2: "height", 3: "width"}}
    if "score" in names:
        dynamic["score"] = {0: "batch"}
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated and smp's shape checks emit tracer warnings; the export
        # is checked against torch by `polypseg export` instead.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (sample,), buf, input_names=["image"], output_names=names, opset_version=OPSET,
            dynamic_axes=dynamic, dynamo=False,
        )
    return buf.getvalue()


def _dynamo_export(module: Probabilities, sample: torch.Tensor) -> bytes:
    dim = torch.export.Dim
    shapes = {"image": {0: dim("batch", min=1, max=64), 2: 32 * dim("h32", min=1, max=256),
                        3: 32 * dim("w32", min=1, max=256)}}
    program = torch.onnx.export(
        module, (sample,), input_names=["image"], output_names=_output_names(module), dynamic_shapes=shapes,
        dynamo=True, verbose=False,
    )
    return program.model_proto.SerializeToString()


def export_bytes(
    model: torch.nn.Module, cfg: Config, checkpoint: str | Path | None = None, dynamo: bool | None = None
) -> bytes:
    """The serialised ONNX model of ``model`` (probabilities out, dynamic batch, height and width), with
    the polypseg metadata. ``dynamo=None``: the TorchScript exporter, or dynamo where it is missing."""
    import onnx

    module = Probabilities(model.to("cpu").eval()).eval()
    sample = torch.zeros(1, cfg.in_channels, cfg.height, cfg.width)
    if dynamo is None:
        try:
            blob = _torchscript_export(module, sample)
        except (ImportError, AttributeError, NotImplementedError, TypeError):  # torch without TorchScript export
            blob = _dynamo_export(module, sample)
    else:
        blob = _dynamo_export(module, sample) if dynamo else _torchscript_export(module, sample)
    proto = onnx.load_from_string(blob)
    meta = {
        ONNX_CONFIG_KEY: json.dumps(cfg.to_dict()),
        "polypseg.input": "image: float32 N x 3 x H x W, RGB scaled to [0, 1] then (x - mean) / std; "
                          "H and W multiples of 32",
        "polypseg.output": "prob: float32 N x 1 x H x W polyp probabilities"
                           + ("; score: float32 N x 1 polyp-frame probabilities (image-level head)" if cfg.aux_head else ""),
        "polypseg.torch": torch.__version__,
    }
    if checkpoint is not None:
        meta[ONNX_SHA256_KEY] = file_sha256(checkpoint)
    set_metadata(proto, meta)
    return proto.SerializeToString()


def set_metadata(proto, values: dict[str, str]) -> None:
    """Set ``values`` in an ONNX ModelProto's metadata, keeping its other entries."""
    kept = {p.key: p.value for p in proto.metadata_props if p.key not in values}
    del proto.metadata_props[:]
    for key, value in {**kept, **values}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


# ---------------------------------------------------------------------------------------------------
# backends


class TorchBackend:
    """Eager torch under ``inference_mode``; ``threads`` applies during each call only."""

    name = "torch"
    session = None
    path = None
    precision = "fp32"

    def __init__(self, model: torch.nn.Module, cfg: Config, device: torch.device, threads: int | None = None):
        self.channels_last = cfg.channels_last
        self.model = model.to(memory_format=torch.channels_last) if self.channels_last else model
        self.device = device
        self.threads = threads

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        with torch_threads(self.threads), torch.inference_mode():
            t = torch.from_numpy(x).to(self.device)
            if self.channels_last:
                t = t.contiguous(memory_format=torch.channels_last)
            logits, head = split_output(self.model(t))
            prob = torch.sigmoid(logits)[:, 0].float().cpu().numpy()
            return prob, None if head is None else torch.sigmoid(head)[:, 0].float().cpu().numpy()


class OnnxBackend:
    """An ONNX Runtime session (its threads are the session's own, set when it was built)."""

    name = "onnxruntime"
    model = None

    def __init__(self, session, path: Path | None = None, skipped: str | None = None):
        self.session, self.path = session, path  # path: the file it runs; None: exported in memory
        self.skipped = skipped  # why an int8 file beside the checkpoint was not run by --precision auto
        self.input_name = session.get_inputs()[0].name

    @property
    def precision(self) -> str:
        return "int8" if INT8_KEY in onnx_metadata(self.session) else "fp32"

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        out = self.session.run(None, {self.input_name: x})
        return out[0][:, 0], out[1][:, 0] if len(out) > 1 else None


def torch_backend(weights: Path, device: str = "cpu", threads: int | None = None) -> tuple[TorchBackend, Config]:
    """The checkpoint ``weights`` (a .safetensors file with its .json) as a torch backend, and its config."""
    dev = torch_device(device)
    model, cfg = load_checkpoint(weights, device=dev)
    return TorchBackend(model, cfg, dev, threads), cfg


def onnx_backend(
    weights: Path | None, onnx_path: str | Path | None = None, device: str = "cpu", threads: int | None = None,
    spin: bool | None = None, precision: str = "fp32",
) -> tuple[OnnxBackend, Config]:
    """An ONNX Runtime backend and the config its file carries.

    ``onnx_path`` given: that file (written by `polypseg export`; when ``weights`` is given too it must
    have been exported from them). Else, by ``precision``: ``fp32``, the ``.onnx`` beside ``weights`` when
    it was exported from these weights, else ``weights`` exported in memory (a few seconds; `polypseg
    export` saves that time); ``int8``, the ``.int8.onnx`` beside ``weights`` (`polypseg export --int8`;
    the real-time model ships one); ``auto``, that int8 file when there is one from these weights and
    ``int8_caveat`` finds nothing against this CPU (else the backend's ``skipped`` says why), else fp32.
    """
    torch_device(device)  # a wrong device fails here, before any export
    skipped = None
    if onnx_path is not None:
        if precision == "int8":
            raise PolypsegError("--precision int8 runs the int8 file beside the checkpoint; an --onnx file is run "
                                "as it is. Give one of the two.")
        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise PolypsegError(f"The ONNX file {onnx_path} does not exist. Write it with `polypseg export`.")
        session = ort_session(onnx_path, device, threads, spin)
        meta = onnx_metadata(session)
        if ONNX_CONFIG_KEY not in meta:
            raise PolypsegError(
                f"{onnx_path} was not written by `polypseg export` (it lacks the polypseg config), so its "
                "input size and normalisation are unknown. Export the run with `polypseg export`."
            )
        if weights is not None and meta.get(ONNX_SHA256_KEY) != file_sha256(weights):
            raise PolypsegError(
                f"{onnx_path} was exported from other weights than {weights}. Export this checkpoint "
                "again (`polypseg export`), or pass only the ONNX file."
            )
    else:
        if weights is None:
            raise PolypsegError("The onnxruntime backend needs a checkpoint or an ONNX file (--onnx).")
        session = int8_session(weights, precision, device, threads, spin)
        int8 = weights.with_suffix(".int8.onnx")
        onnx_path = int8 if session is not None else None
        caveat = _auto_caveat(precision, device)
        if caveat is not None and int8.is_file():
            skipped = f"{int8.name} not run: {caveat} (--precision int8 runs it)"
        if session is None:
            fp32 = weights.with_suffix(".onnx")
            session = exported_from(weights, fp32, device, threads, spin)
            onnx_path = fp32 if session is not None else None
        if session is None:
            model, cfg = load_checkpoint(weights)
            session = ort_session(export_bytes(model, cfg, weights), device, threads, spin)
    if weights is not None:
        # the checkpoint's JSON, not the config the ONNX file was exported with: the file holds the same
        # weights (checked above), but a verdict, operating point or threshold chosen since (`polypseg
        # calibrate`) lives in the JSON only
        cfg = Config.from_dict(read_checkpoint_meta(weights)["config"])
    else:
        cfg = Config.from_dict(json.loads(onnx_metadata(session)[ONNX_CONFIG_KEY]))
    return OnnxBackend(session, onnx_path, skipped), cfg


def check_precision(backend: str, precision: str) -> None:
    """A clear error for an unknown backend or precision, or int8 asked of torch."""
    if backend not in BACKENDS:
        raise PolypsegError(f"Unknown backend '{backend}'. Valid: {', '.join(BACKENDS)}.")
    if precision not in PRECISIONS:
        raise PolypsegError(f"Unknown precision '{precision}'. Valid: {', '.join(PRECISIONS)}.")
    if backend == "torch" and precision == "int8":
        raise PolypsegError("int8 runs on ONNX Runtime: add --backend onnxruntime.")


def int8_caveat(capabilities: Mapping | None = None) -> str | None:
    """Why int8 files should not run by default on this CPU (``torch.cpu.get_capabilities()``), or None.

    On x86 CPUs without VNNI, ONNX Runtime's u8s8 kernels multiply pairs of 8-bit values into 16 bits
    and can saturate (its quantisation docs; docs/speed.md); polypseg's int8 files were checked against
    fp32 only on a CPU with AVX512-VNNI. ARM and other CPUs have no such known failure."""
    caps = torch.cpu.get_capabilities() if capabilities is None else capabilities
    if str(caps.get("architecture", "")).lower() not in ("x86_64", "x86", "amd64", "i386", "i686"):
        return None
    if any(caps.get(k, False) for k in ("avx512_vnni", "avx_vnni", "amx_int8")):
        return None
    return "this x86 CPU has no VNNI, where 8-bit kernels can saturate and int8 was not checked"


def _auto_caveat(precision: str, device: str) -> str | None:
    """``int8_caveat`` where it decides: ``--precision auto`` on the CPU."""
    return int8_caveat() if precision == "auto" and device == "cpu" else None


def int8_session(weights: Path, precision: str, device: str = "cpu", threads: int | None = None,
                 spin: bool | None = None):
    """For ``precision`` int8 or auto, a session of the ``.int8.onnx`` beside ``weights`` when it was
    exported from them; None for fp32, or auto without one or on a CPU ``int8_caveat`` warns of; int8
    without one is an error saying how to write it."""
    if precision == "fp32" or _auto_caveat(precision, device) is not None:
        return None
    int8 = weights.with_suffix(".int8.onnx")
    session = exported_from(weights, int8, device, threads, spin)
    if session is None and precision == "int8":
        raise PolypsegError(
            f"There is no int8 file exported from {weights} ({int8} is missing or from other weights). "
            f"Write it with `polypseg export --run {weights} --int8`, or use --precision fp32."
        )
    return session


def exported_from(weights: Path, path: Path, device: str = "cpu", threads: int | None = None,
                  spin: bool | None = None):
    """A session of the ONNX file ``path`` when it exists and was exported from ``weights``, else None."""
    if not path.is_file():
        return None
    session = ort_session(path, device, threads, spin)
    return session if onnx_metadata(session).get(ONNX_SHA256_KEY) == file_sha256(weights) else None
