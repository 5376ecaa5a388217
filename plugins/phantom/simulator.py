"""A procedural echocardiogram simulator with ground truth.

A patient is a set of anatomy and acquisition parameters plus a fixed tissue texture. A cardiac cycle moves the
left ventricle between its end-diastolic and end-systolic shape; the LV is an ellipsoid whose volume by the
area-length method, V = 8A^2 / (3 pi L), gives the ground-truth EDV, ESV and EF. How a patient moves is their own:
the timing of the cycle within a beat (e.g. a quick systole) and a small drift of the probe (breathing, the
sonographer's hand) that moves the anatomy in the sector both come from the patient's `motion_seed`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy.ndimage import shift

SIZE = 112
CM_PER_PX = 0.18  # 112 px cover about 20 cm of depth
SECTOR_HALF_ANGLE = math.radians(38.0)
SECTOR_RADIUS = 108.0
APEX = (SIZE / 2.0, 2.0)  # transducer position (x, y)
EF_MEAN, EF_SD, EF_MIN, EF_MAX = 56.0, 12.0, 10.0, 90.0
VIEWS = ("a4c", "psax")


@dataclass(frozen=True)
class Patient:
    patient_id: str
    ef: float  # percent
    lv_a: float  # end-diastolic LV semi-major (long) axis, px
    lv_b: float  # end-diastolic LV semi-minor axis, px
    wall: float  # myocardial wall thickness, px
    angle: float  # tilt of the LV long axis from vertical, radians
    apex_x: float  # LV apex position, px
    apex_y: float
    rv_scale: float
    atria_scale: float
    gain: float  # overall brightness
    contrast: float  # myocardium brightness relative to background tissue
    attenuation: float  # depth attenuation length, px
    heart_rate: float  # beats per minute
    phase: float  # cardiac phase at frame 0, radians
    texture_seed: int
    twin_of: int = -1  # texture seed of the patient this one nearly coincides with, -1 if none
    twin_mix: float = 0.0
    motion_seed: int = -1  # draws the beat's timing and the probe's path (`contraction`, `probe_path`); -1: neither

    @property
    def es_axes(self) -> tuple[float, float]:
        """End-systolic semi-axes: the LV shortens less than it narrows; a*b^2 scales by (1 - EF)."""
        keep = 1.0 - self.ef / 100.0
        return self.lv_a * keep**0.2, self.lv_b * keep**0.4

    @staticmethod
    def volume_ml(a_px: float, b_px: float) -> float:
        """Area-length volume of an ellipse with semi-axes a (long) and b: 8A^2/(3 pi L) with A = pi a b, L = 2a."""
        a, b = a_px * CM_PER_PX, b_px * CM_PER_PX
        area, length = math.pi * a * b, 2.0 * a
        return 8.0 * area**2 / (3.0 * math.pi * length)

    @property
    def edv(self) -> float:
        return self.volume_ml(self.lv_a, self.lv_b)

    @property
    def esv(self) -> float:
        return self.volume_ml(*self.es_axes)

    @property
    def measured_ef(self) -> float:
        return 100.0 * (self.edv - self.esv) / self.edv


def _motion_seed(texture_seed: int) -> int:
    """The motion's seed, derived from the texture's so that adding it left every other draw unchanged."""
    return int(np.random.SeedSequence([texture_seed, 0x9A7]).generate_state(1)[0] >> 1)


def sample_ef(rng: np.random.Generator) -> float:
    return float(np.clip(rng.normal(EF_MEAN, EF_SD), EF_MIN, EF_MAX))


def sample_patient(rng: np.random.Generator, patient_id: str) -> Patient:
    return Patient(
        patient_id=patient_id,
        ef=sample_ef(rng),
        lv_a=float(rng.uniform(23.0, 31.0)),
        lv_b=float(rng.uniform(10.0, 14.0)),
        wall=float(rng.uniform(3.0, 5.5)),
        angle=float(rng.uniform(-0.25, 0.25)),
        apex_x=float(rng.uniform(60.0, 70.0)),
        apex_y=float(rng.uniform(16.0, 24.0)),
        rv_scale=float(rng.uniform(0.75, 1.15)),
        atria_scale=float(rng.uniform(0.8, 1.2)),
        gain=float(rng.uniform(0.75, 1.15)),
        contrast=float(rng.uniform(1.6, 2.4)),
        attenuation=float(rng.uniform(90.0, 160.0)),
        heart_rate=float(rng.uniform(55.0, 105.0)),
        phase=float(rng.uniform(0, 2 * math.pi)),
        texture_seed=(texture := int(rng.integers(0, 2**31 - 1))),
        motion_seed=_motion_seed(texture),
    )


def near_twin(parent: Patient, rng: np.random.Generator, patient_id: str) -> Patient:
    """A different patient whose anatomy and texture nearly coincide with `parent`'s (hard negatives)."""
    def jitter(value: float, rel: float = 0.02) -> float:
        return float(value * (1.0 + rng.uniform(-rel, rel)))

    return replace(
        parent,
        patient_id=patient_id,
        ef=float(np.clip(parent.ef + rng.uniform(-3, 3), EF_MIN, EF_MAX)),
        lv_a=jitter(parent.lv_a), lv_b=jitter(parent.lv_b), wall=jitter(parent.wall),
        apex_x=parent.apex_x + float(rng.uniform(-1, 1)), apex_y=parent.apex_y + float(rng.uniform(-1, 1)),
        gain=jitter(parent.gain), heart_rate=jitter(parent.heart_rate, 0.1),
        phase=float(rng.uniform(0, 2 * math.pi)),
        texture_seed=(texture := int(rng.integers(0, 2**31 - 1))), twin_of=parent.texture_seed, twin_mix=0.2,
        motion_seed=_motion_seed(texture),
    )


#: what moves: the fields that set a patient's contraction curve and the probe's path
MOTION_FIELDS = ("ef", "heart_rate", "phase", "motion_seed")


def recombine(content: Patient, motion: Patient, patient_id: str) -> Patient:
    """`content`'s anatomy, position and texture, beating with `motion`'s contraction (EF, heart rate, phase,
    timing) and moved by its probe's path."""
    return replace(content, patient_id=patient_id, **{f: getattr(motion, f) for f in MOTION_FIELDS})


def sample_patients(rng: np.random.Generator, n: int, twin_fraction: float, prefix: str) -> list[Patient]:
    patients: list[Patient] = []
    for i in range(n):
        pid = f"{prefix}{i:05d}"
        if patients and rng.random() < twin_fraction:
            patients.append(near_twin(patients[int(rng.integers(len(patients)))], rng, pid))
        else:
            patients.append(sample_patient(rng, pid))
    return patients


# ----------------------------------------------------------------------------------------------- rendering

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)


def _smooth_noise(seed: int, sigma: float) -> np.ndarray:
    """Gaussian noise blurred with a separable Gaussian kernel (FFT-free, exact for a fixed seed)."""
    rng = np.random.default_rng(seed)
    field = rng.standard_normal((SIZE + 16, SIZE + 16)).astype(np.float32)
    radius = int(3 * sigma) + 1
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    field = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), 1, field)
    field = np.apply_along_axis(lambda c: np.convolve(c, kernel, mode="same"), 0, field)
    field = field[8:-8, 8:-8]
    return (field - field.mean()) / (field.std() + 1e-8)


def tissue_texture(patient: Patient) -> np.ndarray:
    """Fixed multiplicative speckle of a patient (mean 1); a near twin shares most of its parent's."""
    base = _smooth_noise(patient.texture_seed, 2.2)
    if patient.twin_of >= 0:
        parent = _smooth_noise(patient.twin_of, 2.2)
        base = (1 - patient.twin_mix) * parent + patient.twin_mix * base
        base = (base - base.mean()) / (base.std() + 1e-8)
    return np.exp(0.2 * base - 0.5 * 0.2**2)


def sector_mask() -> np.ndarray:
    dx, dy = _XX - APEX[0], _YY - APEX[1]
    radius = np.hypot(dx, dy)
    angle = np.arctan2(dx, dy)
    inside = (radius <= SECTOR_RADIUS) & (np.abs(angle) <= SECTOR_HALF_ANGLE) & (dy >= 0)
    return inside.astype(np.float32)


_SECTOR = sector_mask()


def _ellipse_rho(cx, cy, a, b, angle) -> np.ndarray:
    """Normalised elliptic radius for every pixel, broadcast over a leading time axis: < 1 inside."""
    c, s = math.cos(angle), math.sin(angle)
    u = (_XX - cx) * s + (_YY - cy) * c  # along the long axis (pointing away from the apex)
    v = (_XX - cx) * c - (_YY - cy) * s
    return np.sqrt((u / a) ** 2 + (v / b) ** 2)


def _soft_inside(rho: np.ndarray, sharpness: float = 10.0) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(np.clip((rho - 1.0) * sharpness, -30, 30)))


def contraction(patient: Patient, n_frames: int, fps: float) -> np.ndarray:
    """0 at end-diastole, 1 at end-systole, per frame. The cycle's phase advances at the heart rate, modulated by
    two harmonics of the patient's own (their amplitudes sum below 1, so the phase never runs backwards)."""
    t = np.arange(n_frames) / fps
    omega = 2 * math.pi * patient.heart_rate / 60.0
    theta = omega * t + patient.phase
    if patient.motion_seed >= 0:
        rng = np.random.default_rng([patient.motion_seed, 1])
        amp, lag = rng.uniform(0, (0.3, 0.2)), rng.uniform(0, 2 * math.pi, 2)
        theta = theta + amp[0] * np.sin(omega * t + lag[0]) + amp[1] * np.sin(2 * omega * t + lag[1])
    return 0.5 * (1.0 - np.cos(theta))


def probe_path(patient: Patient, n_frames: int, fps: float) -> np.ndarray:
    """`[T, 2]` (dx, dy) px by which the probe has moved the anatomy at each frame: per axis a sum of three
    sinusoids of 0.3-2.5 Hz and 0.12-0.48 px drawn from the patient's `motion_seed`."""
    if patient.motion_seed < 0:
        return np.zeros((n_frames, 2))
    rng = np.random.default_rng([patient.motion_seed, 2])
    freq, amp = rng.uniform(0.3, 2.5, (2, 3)), rng.uniform(0.12, 0.48, (2, 3))
    phase = rng.uniform(0, 2 * math.pi, (2, 3))
    t = np.arange(n_frames) / fps
    return (amp[..., None] * np.sin(2 * math.pi * freq[..., None] * t + phase[..., None])).sum(axis=1).T


def moved(patient: Patient, offset: np.ndarray) -> Patient:
    """The patient's anatomy displaced by the probe (`offset` = one row of `probe_path`)."""
    return replace(patient, apex_x=patient.apex_x + float(offset[0]), apex_y=patient.apex_y + float(offset[1]))


def lv_axes(patient: Patient, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a_s, b_s = patient.es_axes
    return patient.lv_a + (a_s - patient.lv_a) * c, patient.lv_b + (b_s - patient.lv_b) * c


def lv_geometry(patient: Patient, a: float) -> tuple[float, float, float, float]:
    """LV centre and unit long-axis direction for a given long semi-axis; the apex stays fixed."""
    dx, dy = math.sin(patient.angle), math.cos(patient.angle)
    return patient.apex_x + a * dx, patient.apex_y + a * dy, dx, dy


def _frame_a4c(patient: Patient, a: float, b: float, c: float) -> tuple[np.ndarray, np.ndarray]:
    """(blood, muscle) soft masks of one apical four-chamber frame."""
    cx, cy, dx, dy = lv_geometry(patient, a)
    w = patient.wall
    lv_blood = _soft_inside(_ellipse_rho(cx, cy, a, b, patient.angle))
    lv_muscle = _soft_inside(_ellipse_rho(cx, cy, a + w, b + w, patient.angle))
    # Right ventricle: to the image left of the septum, shorter than the LV, moves less.
    rv_a, rv_b = patient.lv_a * 0.85 * patient.rv_scale, patient.lv_b * 0.9 * patient.rv_scale * (1 - 0.15 * c)
    off = b + 2 * w + rv_b
    rx, ry = cx - off * dy + 0.1 * rv_a * dx, cy + off * dx + 0.1 * rv_a * dy
    rv_blood = _soft_inside(_ellipse_rho(rx, ry, rv_a, rv_b, patient.angle))
    rv_muscle = _soft_inside(_ellipse_rho(rx, ry, rv_a + w * 0.7, rv_b + w * 0.7, patient.angle))
    # Atria below the valve planes, filling while the ventricles contract.
    la_r = 11.0 * patient.atria_scale * (1 + 0.12 * c)
    base_x, base_y = patient.apex_x + 2 * a * dx, patient.apex_y + 2 * a * dy
    lax, lay = base_x + (la_r + w) * dx, base_y + (la_r + w) * dy
    rax, ray = lax - (off + 2) * dy, lay + (off + 2) * dx
    la = _soft_inside(_ellipse_rho(lax, lay, la_r, la_r * 0.95, patient.angle))
    ra = _soft_inside(_ellipse_rho(rax, ray, la_r * 0.9, la_r * 0.85, patient.angle))
    blood = np.maximum.reduce([lv_blood, rv_blood, la, ra])
    muscle = np.clip(np.maximum(lv_muscle, rv_muscle) - blood, 0, 1)
    return blood, muscle


def _frame_psax(patient: Patient, a: float, b: float, c: float) -> tuple[np.ndarray, np.ndarray]:
    """(blood, muscle) soft masks of one parasternal short-axis frame: a ring-shaped LV and a crescent RV."""
    cx, cy = patient.apex_x - 8.0, 58.0 + (patient.apex_y - 20.0)
    w = patient.wall * (1 + 0.3 * c)  # the wall thickens in systole
    r = b * 1.5
    lv_blood = _soft_inside(_ellipse_rho(cx, cy, r, r * 0.95, patient.angle))
    lv_muscle = _soft_inside(_ellipse_rho(cx, cy, r + w, r * 0.95 + w, patient.angle))
    # Papillary muscles: two bright blobs inside the cavity.
    pap = sum(
        _soft_inside(_ellipse_rho(cx + r * 0.55 * math.cos(t), cy + r * 0.55 * math.sin(t), 2.2, 2.2, 0.0))
        for t in (0.6 + patient.angle, 2.4 + patient.angle)
    )
    rv_r = (r + w) * 1.25 * patient.rv_scale
    rv_outer = _soft_inside(_ellipse_rho(cx - rv_r * 0.7, cy - 3, rv_r * 1.1, rv_r * 0.8, 0.5))
    rv_blood = np.clip(rv_outer - lv_muscle, 0, 1)
    blood = np.clip(np.maximum(lv_blood - pap, rv_blood * (1 - 0.1 * c)), 0, 1)
    muscle = np.clip(np.maximum(lv_muscle, rv_outer) - blood, 0, 1)
    return blood, muscle


def render_video(patient: Patient, view: str, n_frames: int, fps: float, noise_seed: int) -> np.ndarray:
    """`uint8 [T, 112, 112]` frames of one acquisition of `patient`."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")
    texture = tissue_texture(patient)
    depth = np.hypot(_XX - APEX[0], _YY - APEX[1])
    background = 0.40 * np.exp(-depth / patient.attenuation)
    c = contraction(patient, n_frames, fps)
    a_t, b_t = lv_axes(patient, c)
    path = probe_path(patient, n_frames, fps)
    frame_fn = _frame_a4c if view == "a4c" else _frame_psax
    rng = np.random.default_rng(noise_seed)
    out = np.empty((n_frames, SIZE, SIZE), dtype=np.uint8)
    for i in range(n_frames):
        blood, muscle = frame_fn(moved(patient, path[i]), float(a_t[i]), float(b_t[i]), float(c[i]))
        tissue = background * (1 - blood) * (1 + (patient.contrast - 1) * muscle)
        level = 0.06 * blood + tissue
        speckle = shift(texture, (path[i, 1], path[i, 0]), order=1, mode="nearest")  # the tissue moves too
        image = 255.0 * patient.gain * level * speckle * _SECTOR
        image += rng.normal(0.0, 1.5, image.shape) * _SECTOR  # acquisition noise of this frame
        out[i] = np.clip(image, 0, 255).astype(np.uint8)
    return out


def ed_es_frames(patient: Patient, n_frames: int, fps: float) -> tuple[int, int]:
    """Indices of the most end-diastolic and most end-systolic frames of a video."""
    c = contraction(patient, n_frames, fps)
    return int(np.argmin(c)), int(np.argmax(c))


def lv_contour(patient: Patient, c: float, n_points: int = 40) -> np.ndarray:
    """Points `[n, 2]` (x, y) on the LV endocardial border at contraction level `c`."""
    a, b = (float(v) for v in lv_axes(patient, np.asarray(c)))
    cx, cy, dx, dy = lv_geometry(patient, a)
    t = np.linspace(0, 2 * math.pi, n_points, endpoint=False)
    u, v = a * np.cos(t), b * np.sin(t)
    return np.stack([cx + u * dx + v * dy, cy + u * dy - v * dx], axis=1)


def lv_chords(patient: Patient, c: float, n_chords: int = 20) -> np.ndarray:
    """EchoNet-style tracing lines `[1 + n, 4]` (x1, y1, x2, y2): the long axis, then perpendicular chords."""
    a, b = (float(v) for v in lv_axes(patient, np.asarray(c)))
    cx, cy, dx, dy = lv_geometry(patient, a)
    rows = [(patient.apex_x, patient.apex_y, cx + a * dx, cy + a * dy)]
    for s in np.linspace(-a, a, n_chords + 2)[1:-1]:
        half = b * math.sqrt(max(0.0, 1 - (s / a) ** 2))
        px, py = cx + s * dx, cy + s * dy
        rows.append((px - half * dy, py + half * dx, px + half * dy, py - half * dx))
    return np.asarray(rows)
