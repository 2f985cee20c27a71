"""`polypseg serve`'s frames: ``POST /api/v1/segment`` (one uploaded frame), and ``segment_frame``, the path
every single frame takes (the segment endpoint, the live stream and the Python API)."""

from __future__ import annotations

import base64
import time
from typing import Literal

import cv2
import numpy as np
from fastapi import APIRouter, Depends, File, HTTPException, Query, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel

from .errors import PolypsegError
from .media import decode_image
from .predict import describe
from .serve_state import Busy, State, check_type, get_state


def segment_frame(predictor, image: np.ndarray, threshold: float | None = None) -> tuple[np.ndarray, dict]:
    """One RGB frame -> (probability map, ``describe`` of it, with the network's time in ms). The path
    every frame takes: the segment endpoint, the live stream and the Python API. The polyp score and the
    operating point come unrounded, so that a page can print them with the digits that tell them apart
    (``describe`` rounds both to 4 places, which can make a score just under the point look equal to it)."""
    begin = time.perf_counter()
    prediction = predictor.predict(image)
    infer_ms = 1000 * (time.perf_counter() - begin)
    point = predictor.operating_point
    info = describe(prediction, predictor.threshold if threshold is None else threshold, operating_point=point)
    info["polyp_score"] = float(prediction.score)
    info["operating_point"] = float(point)
    info["infer_ms"] = round(infer_ms, 1)
    return prediction.prob, info


def png_bytes(gray: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", gray)
    if not ok:
        raise PolypsegError("OpenCV could not encode a PNG")
    return buf.tobytes()


async def run_frame(state: State, fn, *args):
    """``fn(*args)`` on the inference pool; 503 when the pool is full."""
    try:
        return await state.pool.run(fn, *args)
    except Busy:
        raise HTTPException(503, "the server is busy; retry in a moment") from None


class Segmentation(BaseModel):
    height: int
    width: int
    threshold: float  # the mask threshold (pixel probability)
    polyp_present: bool
    polyp_score: float
    operating_point: float | None
    area_fraction: float
    regions: int
    confidence: float | None
    max_probability: float
    polygons: list[list[list[int]]]
    infer_ms: float
    probability_png: str | None = None


router = APIRouter(prefix="/api/v1", tags=["frames"])


@router.post("/segment", response_model=Segmentation, responses={200: {"content": {"image/png": {}}}})
async def segment(
    file: UploadFile = File(..., description="one frame: PNG, JPEG, TIFF, BMP or WebP"),
    format: Literal["json", "png"] = Query("json", description="json: figures and polygons; png: the 0/255 mask"),
    threshold: float | None = Query(None, ge=0, le=1, description="the mask threshold (pixel probability); "
                                    "default: the model's. The verdict's operating point is the model's (or site's)"),
    probability: bool = Query(False, description="json: add the probability map as an 8-bit PNG (base64)"),
    state: State = Depends(get_state),
):
    """Segment one frame: the verdict (``polyp_score`` against ``operating_point``), polyp area, regions,
    confidence and outlines, or the mask as a PNG."""
    check_type(file, "image")
    data = await file.read()

    def work():
        prob, info = segment_frame(state.predictor, decode_image(data), threshold)
        if format == "png":  # a file: the raw mask, the verdict beside it in the headers (docs/quiet.md)
            return png_bytes((prob >= info["threshold"]).astype(np.uint8) * 255), info
        if probability:
            info["probability_png"] = base64.b64encode(png_bytes(np.round(prob * 255).astype(np.uint8))).decode()
        return None, info

    mask_png, info = await run_frame(state, work)
    if mask_png is not None:
        return Response(mask_png, media_type="image/png", headers={
            "X-Polyp-Area-Fraction": str(info["area_fraction"]), "X-Polyp-Regions": str(info["regions"]),
            "X-Polyp-Confidence": str(info["confidence"] or ""), "X-Threshold": str(info["threshold"]),
            "X-Polyp-Present": str(int(info["polyp_present"])), "X-Polyp-Score": str(info["polyp_score"]),
            "X-Operating-Point": str(info["operating_point"])})
    return info
