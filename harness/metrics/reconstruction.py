"""How faithfully the encoder reconstructs real clips."""

from __future__ import annotations

import math

import numpy as np

from harness.metrics.columns import Column

COLUMNS = [Column("recon_psnr_db", "recon PSNR dB", "↑", 2, group="fidelity",
                  definition="the encoder's reconstruction PSNR on real test clips, the same in every row: the "
                             "ceiling of a latent generator's pixel fidelity")]


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over uint8 arrays (data range 255)."""
    mse = float(np.mean((np.asarray(reference, np.float64) - np.asarray(test, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)
