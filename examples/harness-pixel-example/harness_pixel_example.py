"""A third party's pixel-space generator for reid-harness: eigen-videos conditioned on EF.

`fit` decodes the training clips to pixels with the run's encoder, keeps the `components` leading principal
components of the clips, and regresses their coefficients on EF; `sample` draws coefficients for the requested EF
plus Gaussian residual noise (seeded by each condition) and returns uint8 pixel clips, which the harness encodes
with its own encoder. Install it with `pip install examples/harness-pixel-example`, then
`harness run benchmarks/phantom.yaml --generator pixel-example`.
"""

import numpy as np
from pydantic import Field, PositiveInt

import harness
from harness.components import ComponentConfig, Generator
from harness.data import PixelSamples


class EigenVideos(Generator):
    output = "pixels"

    class Config(ComponentConfig):
        components: PositiveInt = 8
        temperature: float = Field(1.0, ge=0, description="scale of the residual noise")

    def fit(self, data, ctx):
        train = data["train"]
        clips = np.asarray(ctx.encoder.decode(train, ctx).frames, dtype=np.float32)
        self.shape = clips.shape[1:]
        flat = clips.reshape(len(clips), -1)
        self.mean = flat.mean(axis=0)
        _, _, vt = np.linalg.svd(flat - self.mean, full_matrices=False)
        self.basis = vt[: self.config.components]
        coefficients = (flat - self.mean) @ self.basis.T
        design = np.stack([np.ones(len(clips)), train.table["ef"].to_numpy(dtype=np.float32)], axis=1)
        self.weights = np.linalg.lstsq(design, coefficients, rcond=None)[0]
        self.residual = (coefficients - design @ self.weights).std(axis=0)

    def save_state(self, folder):
        np.savez(folder / "eigen.npz", shape=self.shape, mean=self.mean, basis=self.basis, weights=self.weights,
                 residual=self.residual)
        return True

    def load_state(self, folder):
        state = np.load(folder / "eigen.npz")
        self.shape = tuple(state["shape"])
        self.mean, self.basis, self.weights, self.residual = (state[k] for k in ("mean", "basis", "weights",
                                                                                   "residual"))

    def sample(self, conditions, ctx):
        clips = []
        for c in conditions:
            noise = np.random.default_rng(c.seed).standard_normal(len(self.residual))
            coefficients = np.array([1.0, c.ef]) @ self.weights + self.config.temperature * self.residual * noise
            clips.append(self.mean + coefficients @ self.basis)
        frames = np.clip(np.rint(np.stack(clips)), 0, 255).astype(np.uint8).reshape(len(conditions), *self.shape)
        return PixelSamples.from_conditions(frames, conditions, fps=ctx.clip.fps, model="eigen-videos",
                                            components=self.config.components)


@harness.hookimpl
def register_generators(register):
    register("pixel-example", EigenVideos)
