"""Predict polyp masks for images: one frame in, a probability map at the frame's own size out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .config import Config
from .model import load_checkpoint
from .transforms import from_output, to_input


class Predictor:
    """A loaded model that maps RGB uint8 frames of any size to polyp probability maps.

    ``tta=True`` averages the probabilities of the frame and its horizontal and vertical flips.
    """

    def __init__(self, checkpoint: str | Path, device: str = "cpu", tta: bool = False):
        self.model, self.config = load_checkpoint(checkpoint, device=device)
        self.device = torch.device(device)
        self.tta = tta

    @property
    def threshold(self) -> float:
        return self.config.threshold

    @torch.inference_mode()
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        prob = torch.sigmoid(logits)
        if self.tta:
            prob = prob + torch.sigmoid(self.model(x.flip(-1))).flip(-1)
            prob = prob + torch.sigmoid(self.model(x.flip(-2))).flip(-2)
            prob = prob / 3
        return prob[:, 0]

    def predict_prob(self, image: np.ndarray) -> np.ndarray:
        """RGB uint8 H x W x 3 -> float32 H x W probabilities of 'polyp'."""
        x, fitted = to_input(image, self.config)
        prob = self._forward(torch.from_numpy(x)[None].to(self.device))[0].float().cpu().numpy()
        return from_output(prob, fitted, image.shape[:2])

    def predict_mask(self, image: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """RGB uint8 H x W x 3 -> bool H x W polyp mask at the model's (or the given) threshold."""
        t = self.threshold if threshold is None else threshold
        return self.predict_prob(image) >= t
