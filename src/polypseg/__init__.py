"""polypseg: polyp segmentation in colonoscopy images and video.

The Python API is a few calls::

    import polypseg
    cfg = polypseg.from_preset("cpu-fast", data="../shared/data/cvc-clinicdb")
    run = polypseg.train(cfg, "runs/first")            # a run folder
    model, cfg = polypseg.load_model(run)               # an smp nn.Module and its Config
    predictor = polypseg.Predictor(run)                 # RGB frame of any size -> Prediction
    result = predictor.predict(frame)                   # .prob (H x W), .score, .polyp_present (the verdict)
    polypseg.describe(result, predictor.threshold)      # verdict, score, area, regions, confidence, polygons
    summary = polypseg.evaluate(run)                    # metrics + report of the split's test side
    profile, path = polypseg.calibrate_site(run, "endo-3", ["polyp-free-exam.mp4"], flagged_share=0.05)
    stats = polypseg.run_video("exam.mp4", polypseg.Predictor(run, site="endo-3"), "out.mp4")  # outlines only
                                                        # while an alert is on (polypseg.exam)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> module: imported on first use, so that `polypseg data check` does not pay for torch.
_API = {
    "Config": "config",
    "from_preset": "config",
    "PRESETS": "config",
    "PolypsegError": "errors",
    "train": "train",
    "calibrate": "calibration",
    "calibrate_site": "calibration",
    "load_model": "model",
    "build_model": "model",
    "Predictor": "predict",
    "describe": "predict",
    "AlertRule": "alerts",
    "AlertTracker": "alerts",
    "ExamLog": "exam",
    "run_video": "video",
    "evaluate": "evaluate",
    "index_dataset": "data",
    "make_split": "splits",
    "create_app": "serve",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'polypseg' has no attribute {name!r}")
    module = importlib.import_module(f".{_API[name]}", __name__)
    value = getattr(module, "load_checkpoint" if name == "load_model" else name)
    # Importing polypseg.train binds the package's `train` to that module; the API's name wins, so a second
    # polypseg.train(...) still calls the function.
    globals()[name] = value
    return value
