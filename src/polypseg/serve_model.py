"""`polypseg serve`'s model resource: ``GET /api/v1/model`` (what the page's model card says) and ``/healthz``."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from .serve_state import State, get_state

router = APIRouter(tags=["model"])


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/api/v1/model")
def get_model(state: State = Depends(get_state)) -> dict:
    """The model, and its three settings named apart: ``mask_threshold`` (pixel probability: the mask),
    ``operating_point`` (polyp score of kind ``verdict``: the frame's verdict; the applied site's, if any,
    else ``model_operating_point``) and ``alert_rule`` (onset and release in ms: the alert)."""
    return state.info
