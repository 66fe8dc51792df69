"""Drawing of one simulated ultrasound frame (docs/design.md §11): sector, organs, speckle, chrome, Doppler.

Not physics: just enough structure that organs differ in echogenicity, texture, shape and position,
with exam-level (vendor, patient) variation, so clustering and classification methods can differ.
Coordinates: X lateral, Y axial, both in units of the scan depth span, probe apex at the origin;
organs are placed by (lat, depth) with lat in [-1, 1] of the sector half-angle and depth in [0, 1].
Image left = patient right: liver on the left, spleen on the right.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

ORGANS = ("liver", "gallbladder", "kidney", "pancreas", "spleen", "bladder")
DRAW_ORDER = ("bladder", "liver", "spleen", "kidney", "pancreas", "gallbladder")

# Fictitious vendors: sector half-angle (rad), curvilinear radius (frame fraction), log dynamic range,
# grey-map gamma and shape, and whether B-mode is exported as 3-channel grey.
VENDORS = (
    dict(name="SONOVIA S7", half=(0.40, 0.46), r0=(0.10, 0.16), span=(5.0, 5.8), gamma=(0.8, 1.0),
         curve="gamma", rgb_gray=False, jpeg=92),
    dict(name="ECHOMAX 300", half=(0.36, 0.42), r0=(0.14, 0.20), span=(5.6, 6.6), gamma=(1.0, 1.3),
         curve="sigmoid", rgb_gray=True, jpeg=85),
    dict(name="ULTRAVUE XG", half=(0.38, 0.45), r0=(0.08, 0.12), span=(4.6, 5.4), gamma=(0.9, 1.1),
         curve="gamma", rgb_gray=True, jpeg=90),
    dict(name="MEDISCAN P9", half=(0.42, 0.46), r0=(0.12, 0.18), span=(5.2, 6.0), gamma=(1.1, 1.4),
         curve="sigmoid", rgb_gray=False, jpeg=95),
)


@dataclass
class ExamStyle:
    """Everything fixed within one exam: geometry maps, grey map, noise fields, chrome overlay."""
    size: int
    X: np.ndarray
    Y: np.ndarray
    rn: np.ndarray            # distance from apex (depth-span units)
    theta: np.ndarray         # beam angle (rad, 0 = straight down)
    depth: np.ndarray         # 0..1 inside the sector
    lat: np.ndarray           # -1..1 inside the sector
    mask: np.ndarray          # bool sector mask
    profile: np.ndarray       # S x S gain: near-field layers x attenuation x TGC
    r0n: float
    half: float
    ax: float                 # apex (pixels) and depth span (pixels): XY <-> pixel
    ay: float
    D: float
    lo: float                 # log-intensity shown as black
    span: float               # log dynamic range
    lut: np.ndarray           # 1024 -> uint8 grey map
    fields: dict[str, np.ndarray]  # 2S x 2S unit-variance smooth noise, cropped per use
    overlay: np.ndarray       # uint8 chrome (text, grey bar) outside the sector
    font_scale: float
    patient: dict


def _smooth_field(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """n x n Gaussian-smoothed noise, unit variance; broad fields are drawn coarse and upsampled (speed)."""
    k = max(1, int(sigma // 2))
    m = -(-n // k)
    f = cv2.GaussianBlur(rng.standard_normal((m, m), dtype=np.float32), (0, 0), max(sigma / k, 0.3))
    if k > 1:
        f = cv2.resize(f, (n, n), interpolation=cv2.INTER_LINEAR)
    return f / (f.std() + 1e-6)


def _speckle_field(rng: np.random.Generator, n: int, sx: float, sy: float) -> np.ndarray:
    """Fully developed speckle: magnitude of a laterally correlated complex Gaussian field, mean 1."""
    z = rng.standard_normal((2, n, n), dtype=np.float32)
    mag = np.hypot(cv2.GaussianBlur(z[0], (0, 0), sigmaX=sx, sigmaY=sy),
                   cv2.GaussianBlur(z[1], (0, 0), sigmaX=sx, sigmaY=sy))
    return mag / mag.mean()


def _fit_text(text: str, scale: float, width: float) -> float:
    """Largest font scale <= scale whose rendering of `text` fits in `width` pixels."""
    while scale > 0.12:
        (w, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_PLAIN, scale, 1)
        if w <= width:
            break
        scale *= 0.85
    return scale


def _chrome(S: int, texts_left: list[str], texts_right: list[str],
            rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Burned-in text (left and right of the sector top) and a grey-scale bar, as a uint8 overlay."""
    ov = np.zeros((S, S), np.uint8)
    base = S / 300
    lines = (0.06, 0.11, 0.16)
    for i, t in enumerate(texts_left):
        sc = _fit_text(t, base, 0.36 * S - 2)
        cv2.putText(ov, t, (max(1, int(0.02 * S)), int(lines[i] * S)), cv2.FONT_HERSHEY_PLAIN, sc,
                    int(rng.integers(190, 256)), 1, cv2.LINE_AA)
    for i, t in enumerate(texts_right):
        sc = _fit_text(t, base, 0.34 * S - 2)
        (w, _), _ = cv2.getTextSize(t, cv2.FONT_HERSHEY_PLAIN, sc, 1)
        cv2.putText(ov, t, (S - w - max(1, int(0.02 * S)), int(lines[i] * S)), cv2.FONT_HERSHEY_PLAIN, sc,
                    int(rng.integers(190, 256)), 1, cv2.LINE_AA)
    y0, y1 = int(0.22 * S), int(0.55 * S)
    x0, x1 = int(0.93 * S), max(int(0.93 * S) + 1, int(0.965 * S))
    ov[y0:y1, x0:x1] = np.linspace(255, 0, y1 - y0, dtype=np.float32).astype(np.uint8)[:, None]
    return ov, base


def make_exam_style(size: int, vendor: int, patient: dict, texts: tuple[list[str], list[str]],
                    rng: np.random.Generator) -> ExamStyle:
    """Draw the exam's geometry, vendor grey map and noise fields (all frames of the exam share them)."""
    v, S = VENDORS[vendor], size
    half = float(rng.uniform(*v["half"]))
    r0 = float(rng.uniform(*v["r0"])) * S
    ay = (0.08 + rng.uniform(-0.01, 0.01)) * S - r0
    ax = (0.5 + rng.uniform(-0.01, 0.01)) * S
    r1 = min(0.96 * S - ay, 0.45 * S / np.sin(half))
    D = r1 - r0
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) + 0.5
    X, Y = (xx - ax) / D, (yy - ay) / D
    rn, theta = np.hypot(X, Y), np.arctan2(X, Y)
    depth, lat = rn - r0 / D, theta / half
    mask = (depth >= 0) & (depth <= 1) & (np.abs(lat) <= 1)

    d = np.linspace(0, 1, 256, dtype=np.float32)
    alpha = patient["atten"]
    knots = np.exp(rng.normal(0, 0.12, 6)).astype(np.float32)
    tgc = np.exp(rng.uniform(0.5, 0.9) * alpha * d) * np.interp(d, np.linspace(0, 1, 6), knots)
    near = (1 + 1.6 * np.exp(-((d - 0.012) / 0.008) ** 2) - 0.45 * ((d > 0.025) & (d < 0.07))
            + 0.25 * np.sin(d * 260) * ((d > 0.07) & (d < 0.12)))
    prof = (near * np.exp(-alpha * d) * tgc).astype(np.float32)
    profile = prof[np.clip(depth * 255, 0, 255).astype(np.intp)]

    x = np.linspace(0, 1, 1024, dtype=np.float64)
    g = rng.uniform(*v["gamma"])
    if v["curve"] == "sigmoid":
        k = rng.uniform(3, 5)
        x = 0.5 + 0.5 * np.tanh(k * (x - 0.5)) / np.tanh(k / 2)
    lut = np.round(255 * x ** g).astype(np.uint8)

    n = 2 * S
    fields = {"fine": _smooth_field(rng, n, 0.010 * S), "medium": _smooth_field(rng, n, 0.025 * S),
              "coarse": _smooth_field(rng, n, 0.06 * S), "warp": _smooth_field(rng, n, 0.10 * S),
              "speckle": _speckle_field(rng, n, 0.9 * S / 128, 0.5 * S / 128)}
    overlay, fs = _chrome(S, texts[0], texts[1] + [v["name"]], rng)
    return ExamStyle(size=S, X=X, Y=Y, rn=rn, theta=theta, depth=depth, lat=lat, mask=mask, profile=profile,
                     r0n=r0 / D, half=half, ax=ax, ay=ay, D=D, lo=float(-3.4 + rng.normal(0, 0.25)),
                     span=float(rng.uniform(*v["span"])), lut=lut, fields=fields, overlay=overlay,
                     font_scale=fs, patient=patient)


def _crop(st: ExamStyle, name: str, rng: np.random.Generator) -> np.ndarray:
    oy, ox = rng.integers(0, st.size, 2)
    return st.fields[name][oy:oy + st.size, ox:ox + st.size]


def _xy(st: ExamStyle, lat: float, depth: float) -> tuple[float, float]:
    r, th = st.r0n + depth, lat * st.half
    return r * np.sin(th), r * np.cos(th)


def _window(st: ExamStyle, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice]:
    """Pixel slices (at least 1 x 1) covering the XY box [x0, x1] x [y0, y1], clipped to the frame."""
    S = st.size
    px0, px1 = st.ax + x0 * st.D - 1, st.ax + x1 * st.D + 2
    py0, py1 = st.ay + y0 * st.D - 1, st.ay + y1 * st.D + 2
    c0, r0 = min(max(int(px0), 0), S - 1), min(max(int(py0), 0), S - 1)
    return slice(r0, min(max(int(py1), r0 + 1), S)), slice(c0, min(max(int(px1), c0 + 1), S))


def _blob(st, c, a, b, rot, rng, power=2.0, warp=0.0, reach=1.0):
    """Soft mask (0..1) of a rotated (super)ellipse on its bounding window `sl`, plus its normalised
    coordinates u, v and radius q there; `reach` = largest q the caller uses (rings outside the edge)."""
    rad = max(a, b) * np.sqrt(reach + 3 * warp)
    sl = _window(st, c[0] - rad, c[0] + rad, c[1] - rad, c[1] + rad)
    dx, dy = st.X[sl] - c[0], st.Y[sl] - c[1]
    cs, sn = np.float32(np.cos(rot)), np.float32(np.sin(rot))
    u = (cs * dx + sn * dy) / a
    v = (cs * dy - sn * dx) / b
    q = u * u + v * v if power == 2.0 else np.abs(u) ** power + np.abs(v) ** power
    if warp:
        q += warp * _crop(st, "warp", rng)[sl]
    return sl, np.clip((1 - q) * 6.0, 0, 1), u, v, q


def _fill(E: np.ndarray, sl, m: np.ndarray, target) -> None:
    w = E[sl]
    w += m * (target - w)


def _beam(st, P, c, half_w, r_start, gain) -> None:
    """Scale P along the beam below a structure: posterior enhancement (gain > 0) or shadow (< 0)."""
    rc, th = float(np.hypot(*c)), float(np.arctan2(c[0], c[1]))
    dth = 1.6 * half_w / rc
    rb = st.r0n + 1.05
    xs = [r * np.sin(th + s * dth) for r in (r_start, rb) for s in (-1, 1)]
    sl = _window(st, min(xs), max(xs), r_start * np.cos(th) - half_w, rb)
    t = (st.theta[sl] - th) * (rc / half_w)
    P[sl] *= 1 + gain * np.exp(-(t * t) ** 2) * np.clip((st.rn[sl] - r_start) * 25, 0, 1)


def _anechoic(st, E, P, c, a, b, rot, rng, power, enh):
    sl, m, _, _, q = _blob(st, c, a, b, rot, rng, power, warp=0.08, reach=1.35)
    _fill(E, sl, np.clip((1.35 - q) * 5, 0, 1), 1.6)           # bright wall
    _fill(E, sl, m, 0.04)
    _beam(st, P, c, 0.8 * max(a, b), float(np.hypot(*c)) + 0.6 * b, enh)


def _liver(st, E, P, p, rng):
    sl, m, u, v, q = _blob(st, p["c"], p["a"], p["b"], p["rot"], rng, warp=0.25, reach=1.1)
    _fill(E, sl, m, st.patient["liver_echo"] * (1 + 0.22 * _crop(st, "fine", rng)[sl]))
    E[sl] += 1.4 * np.clip(1 - np.abs(q - 1.0) * 12, 0, 1) * (v > 0.2)   # diaphragm along the deep edge
    cs, sn = np.cos(p["rot"]), np.sin(p["rot"])
    for _ in range(int(rng.integers(1, 4))):                             # portal / hepatic veins
        ang, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.7)
        lu, lv = rad * np.cos(ang) * p["a"], rad * np.sin(ang) * p["b"]
        c = (p["c"][0] + cs * lu - sn * lv, p["c"][1] + sn * lu + cs * lv)
        r = rng.uniform(0.02, 0.045)
        vs, vm, _, _, vq = _blob(st, c, r * rng.uniform(1, 2.5), r, rng.uniform(0, np.pi), rng, reach=1.5)
        _fill(E, vs, np.clip((1.5 - vq) * 4, 0, 1), 1.5)
        _fill(E, vs, vm, 0.06)


def _spleen(st, E, P, p, rng):
    sl, m, _, _, _ = _blob(st, p["c"], p["a"], p["b"], p["rot"], rng, warp=0.15)
    cs, sn = np.cos(p["rot"]), np.sin(p["rot"])
    hc = (-0.75 * p["a"], 0.55 * p["b"])                                  # concave hilum side
    hilum = (p["c"][0] + cs * hc[0] - sn * hc[1], p["c"][1] + sn * hc[0] + cs * hc[1])
    dx, dy = st.X[sl] - hilum[0], st.Y[sl] - hilum[1]
    hq = ((cs * dx + sn * dy) / (0.6 * p["a"])) ** 2 + ((cs * dy - sn * dx) / (0.7 * p["b"])) ** 2
    m *= np.clip((hq - 1) * 6.0, 0, 1)
    _fill(E, sl, m, 1.12 * st.patient["liver_echo"] ** 0.5 * (1 + 0.3 * _crop(st, "medium", rng)[sl]))


def _kidney(st, E, P, p, rng):
    sl, m, _, _, q = _blob(st, p["c"], p["a"], p["b"], p["rot"], rng, warp=0.1, reach=1.3)
    _fill(E, sl, np.clip((1.3 - q) * 5, 0, 1), 1.3)                    # capsule
    _fill(E, sl, m, 0.5 * (1 + 0.2 * _crop(st, "fine", rng)[sl]))      # hypoechoic cortex
    ss, s, _, _, _ = _blob(st, p["c"], 0.55 * p["a"], 0.38 * p["b"], p["rot"], rng, warp=0.5)
    _fill(E, ss, s, 1.9 * (1 + 0.4 * _crop(st, "coarse", rng)[ss]))    # bright central sinus


def _pancreas(st, E, P, p, rng):
    sl, m, u, v, _ = _blob(st, p["c"], p["a"], p["b"], p["rot"], rng, warp=0.2)
    bands = 1 + 0.35 * np.sin(u * (p["a"] * 2 * np.pi / 0.045) + rng.uniform(0, 6.3))
    _fill(E, sl, m, 1.25 * bands * (1 + 0.15 * _crop(st, "fine", rng)[sl]))
    cs, sn = np.cos(p["rot"]), np.sin(p["rot"])
    off = 1.6 * p["b"]
    vein = (p["c"][0] - sn * off, p["c"][1] + cs * off)                # splenic vein behind it
    vs, vm, _, _, _ = _blob(st, vein, 0.8 * p["a"], 0.35 * p["b"], p["rot"], rng)
    _fill(E, vs, vm, 0.06)


def _gallbladder(st, E, P, p, rng):
    _anechoic(st, E, P, p["c"], p["a"], p["b"], p["rot"], rng, 2.0, 0.8)


def _bladder(st, E, P, p, rng):
    _anechoic(st, E, P, p["c"], p["a"], p["b"], p["rot"], rng, 3.5, 1.0)


DRAW = {"liver": _liver, "spleen": _spleen, "kidney": _kidney, "pancreas": _pancreas,
        "gallbladder": _gallbladder, "bladder": _bladder}


def _distractor(st, E, P, rng) -> None:
    """Non-target anatomy: bowel gas, vessels, muscle, rib shadow, hypoechoic blobs."""
    kind = rng.choice(5)
    c = _xy(st, rng.uniform(-0.9, 0.9), rng.uniform(0.1, 0.85))
    rot = rng.uniform(0, np.pi)
    if kind == 0:    # bowel loop: bright ring + dirty shadow
        r = rng.uniform(0.04, 0.09)
        sl, _, _, _, q = _blob(st, c, r * rng.uniform(1, 1.6), r, rot, rng, warp=0.3)
        _fill(E, sl, np.clip(1 - np.abs(q - 0.7) * 4, 0, 1), 2.4)
        _beam(st, P, c, r, float(np.hypot(*c)) + r, -0.6)
    elif kind == 1:  # vessel (aorta/IVC), round or elongated
        r = rng.uniform(0.02, 0.05)
        sl, m, _, _, _ = _blob(st, c, r * rng.choice([1.0, 5.0]), r, rot, rng)
        _fill(E, sl, m, 0.05)
    elif kind == 2:  # striated muscle
        sl, m, u, _, _ = _blob(st, c, rng.uniform(0.15, 0.3), rng.uniform(0.05, 0.1), rot, rng, warp=0.2)
        _fill(E, sl, m, 0.55 * (1 + 0.3 * np.sin(u * 25)))
    elif kind == 3:  # rib: bright arc near the top and a strong shadow below
        c = _xy(st, rng.uniform(-0.8, 0.8), rng.uniform(0.05, 0.2))
        sl, m, _, _, _ = _blob(st, c, 0.08, 0.02, rng.uniform(-0.2, 0.2), rng)
        _fill(E, sl, m, 3.0)
        _beam(st, P, c, 0.07, float(np.hypot(*c)) + 0.02, -0.8)
    else:            # hypoechoic blob (lymph node, fluid, lesion)
        r = rng.uniform(0.04, 0.1)
        sl, m, _, _, _ = _blob(st, c, r * rng.uniform(1, 1.8), r, rot, rng, warp=0.3)
        _fill(E, sl, m, rng.uniform(0.2, 0.45))


def place_organs(organs: tuple[str, ...], scale: float, rng: np.random.Generator, st: ExamStyle) -> dict:
    """Centre, semi-axes and rotation of each organ, with anatomically plausible neighbours."""
    n = rng.normal
    has = set(organs)
    p: dict[str, dict] = {}
    if "liver" in has:
        d = n(0.25 if has & {"kidney", "pancreas"} else 0.3, 0.07)
        lat = n(-0.45 if "pancreas" in has else -0.35, 0.15)
        p["liver"] = dict(lat=lat, depth=d, a=0.55 * scale * rng.uniform(0.85, 1.15),
                          b=0.36 * scale * rng.uniform(0.85, 1.15), rot=n(0.3, 0.2))
    if "spleen" in has:
        p["spleen"] = dict(lat=n(0.4, 0.15), depth=n(0.3, 0.08), a=0.32 * scale * rng.uniform(0.8, 1.15),
                           b=0.17 * scale * rng.uniform(0.8, 1.15), rot=n(-0.4, 0.2))
    if "kidney" in has:
        if "liver" in p:
            lat, d, rot = n(0.0, 0.15), p["liver"]["depth"] + n(0.36, 0.05), n(0.4, 0.25)
        elif "spleen" in p:
            lat, d, rot = n(0.1, 0.15), n(0.62, 0.06), n(-0.4, 0.25)
        else:
            lat, d, rot = n(0, 0.3), n(0.5, 0.1), n(0, 0.5)
        p["kidney"] = dict(lat=lat, depth=d, a=0.3 * scale * rng.uniform(0.85, 1.15),
                           b=0.15 * scale * rng.uniform(0.85, 1.15), rot=rot)
    if "pancreas" in has:
        p["pancreas"] = dict(lat=n(0.05, 0.15), depth=n(0.55 if "liver" in p else 0.45, 0.07),
                             a=0.36 * scale * rng.uniform(0.8, 1.2), b=0.065 * rng.uniform(0.8, 1.25),
                             rot=n(0, 0.2))
    if "gallbladder" in has:
        if "liver" in p:
            lat, d = p["liver"]["lat"] + n(0.3, 0.1), p["liver"]["depth"] + n(0.15, 0.05)
        else:
            lat, d = n(0, 0.3), n(0.4, 0.1)
        p["gallbladder"] = dict(lat=lat, depth=d, a=rng.uniform(0.11, 0.18), b=rng.uniform(0.05, 0.09),
                                rot=n(0.3, 0.3))
    if "bladder" in has:
        p["bladder"] = dict(lat=n(0, 0.15), depth=n(0.42, 0.08), a=rng.uniform(0.17, 0.25),
                            b=rng.uniform(0.13, 0.19), rot=n(0, 0.1))
    for q in p.values():
        q["c"] = _xy(st, q.pop("lat"), q.pop("depth"))
    return p


def _doppler(st: ExamStyle, gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour-Doppler frame (RGB): saturated red/blue flow inside a colour box, colour bar on the left."""
    S = st.size
    l0 = rng.uniform(-0.9, 0.1)
    l1 = min(1.0, l0 + rng.uniform(0.6, 0.9))
    d0 = rng.uniform(0.1, 0.45)
    d1 = d0 + rng.uniform(0.3, 0.45)
    box = st.mask & (st.lat >= l0) & (st.lat <= l1) & (st.depth >= d0) & (st.depth <= d1)
    vel = _crop(st, "medium", rng)
    mag = np.clip((np.abs(vel) - 0.7) / 1.2, 0, 1)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    red, blue = box & (vel > 0.7), box & (vel < -0.7)
    zero = np.zeros_like
    rgb[red] = np.stack([160 + 95 * mag[red], 40 * mag[red], zero(mag[red])], 1).astype(np.uint8)
    rgb[blue] = np.stack([zero(mag[blue]), 60 * mag[blue], 170 + 85 * mag[blue]], 1).astype(np.uint8)
    y0, y1, x0 = int(0.3 * S), int(0.55 * S), max(1, int(0.03 * S))
    ramp = np.linspace(1, -1, y1 - y0)[:, None]
    bar = np.zeros((y1 - y0, 1, 3), np.float64)
    bar[..., 0], bar[..., 2] = 255 * np.clip(ramp, 0, 1), 255 * np.clip(-ramp, 0, 1)
    rgb[y0:y1, x0:x0 + max(1, int(0.025 * S))] = bar.astype(np.uint8)
    return rgb


def render_frame(st: ExamStyle, organs: tuple[str, ...], rng: np.random.Generator, doppler: bool = False,
                 frame_no: int = 0) -> np.ndarray:
    """One frame: uint8 S x S (B-mode) or S x S x 3 RGB (colour Doppler)."""
    E = 0.7 * (1 + 0.45 * _crop(st, "coarse", rng))
    np.maximum(E, 0.1, out=E)
    P = np.ones_like(E)
    for _ in range(int(rng.integers(2, 5) if not organs else rng.integers(0, 3))):
        _distractor(st, E, P, rng)
    placed = place_organs(organs, st.patient["scale"], rng, st)
    for organ in DRAW_ORDER:
        if organ in placed:
            DRAW[organ](st, E, P, placed[organ], rng)
    np.maximum(E, 0.02, out=E)
    spk = _crop(st, "speckle", rng)
    E *= P
    E *= st.profile
    E *= spk if rng.random() < 0.5 else spk[:, ::-1]
    E += 0.03
    np.log(E, out=E)
    E -= st.lo + rng.normal(0, 0.08)
    E *= 1023 / st.span
    np.clip(E, 0, 1023, out=E)
    img = st.lut[E.astype(np.intp)]
    img[~st.mask] = 0
    np.maximum(img, st.overlay, out=img)
    S = st.size
    cv2.putText(img, f"F{frame_no + 1}", (max(1, int(0.02 * S)), int(0.97 * S)), cv2.FONT_HERSHEY_PLAIN,
                st.font_scale, 220, 1, cv2.LINE_AA)
    return _doppler(st, img, rng) if doppler else img
