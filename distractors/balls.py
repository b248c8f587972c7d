"""Moving-ball distractor background (SAC+AE, Yarats et al., section 5.2 and figure 7).

The paper replaces the static DeepMind Control background by coloured balls that bounce off
each other and off the frame, so that an encoder must learn to ignore task-irrelevant motion.
This module simulates and draws those balls with numpy only, fast enough to run once per
rendered frame (see benchmarks/distractors.py).

Coordinates are continuous pixels: pixel (row i, column j) covers [j, j+1) x [i, i+1) and has
its centre at (j + 0.5, i + 0.5); the frame spans [0, width] x [0, height]. A ball is inside
the frame when r <= x <= width - r and r <= y <= height - r.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np

RGB = tuple[int, int, int]

# Saturated colours that stand out on black, as in the paper's figure 7.
DEFAULT_PALETTE: tuple[RGB, ...] = (
    (230, 25, 75),  # red
    (60, 200, 75),  # green
    (0, 130, 230),  # blue
    (255, 225, 25),  # yellow
    (240, 50, 230),  # magenta
    (70, 240, 240),  # cyan
    (245, 130, 48),  # orange
    (255, 255, 255),  # white
)

# Sub-pixel positions per axis for which disc sprites are precomputed: a centre is rounded to
# 1/8 px (error <= 1/16 px, invisible after anti-aliasing) so drawing is a table look-up.
_SUBPIXEL = 8
# Overlaps smaller than this (px) are ignored, so pairs that were just separated exactly are not
# picked up again by floating-point rounding.
_CONTACT_EPS = 1e-6
# Passes of positional correction per sub-step; one is enough unless a ball is pinned at a wall.
_CORRECTION_PASSES = 8


@dataclass(frozen=True)
class BallOptions:
    """Appearance and motion of the balls; defaults look like the paper's figure 7.

    Sizes and speeds are fractions of the shorter frame side so that a scene looks the same at
    any resolution; at 84x84 the defaults give radii of about 6-12 px and speeds of about
    0.8-2.5 px per step.
    """

    num_balls: int = 6
    radius_range: tuple[float, float] = (0.07, 0.14)
    """Radius, drawn uniformly in this range, as a fraction of min(height, width)."""
    speed_range: tuple[float, float] = (0.01, 0.03)
    """Initial speed (direction uniform), as a fraction of min(height, width) per step."""
    palette: tuple[RGB, ...] = DEFAULT_PALETTE
    """Ball colours; distinct colours are drawn while there are enough of them."""
    background: RGB = (0, 0, 0)
    """Colour behind the balls (black in the paper)."""


def _check_rgb(name: str, value: Sequence[int]) -> RGB:
    if len(value) != 3 or any(not 0 <= int(c) <= 255 for c in value):
        raise ValueError(f"{name} must be an (r, g, b) triple in 0..255, got {value!r}")
    return (int(value[0]), int(value[1]), int(value[2]))


def _check_range(name: str, value: Sequence[float], minimum: float) -> tuple[float, float]:
    if len(value) != 2 or not minimum <= value[0] <= value[1]:
        raise ValueError(f"{name} must be (low, high) with {minimum} <= low <= high, got {value!r}")
    return (float(value[0]), float(value[1]))


class BallDistractor:
    """Coloured balls bouncing elastically in a height x width frame.

    Physics: balls move in straight lines and collide elastically with each other and with the
    frame edges, so the total kinetic energy sum(m |v|^2) / 2 is conserved. A ball's mass is
    its radius squared (proportional to its area, as for flat discs of equal density). Each
    step is split into sub-steps so that no pair moves closer by more than the smallest
    radius per sub-step (no tunnelling); overlaps left after a collision are removed by moving
    the pair apart along the contact normal, which changes no velocity and hence no energy.

    Attributes (updated in place by reset and step): positions (N, 2) centres, x then y, in
    pixels; velocities (N, 2) in pixels per step; radii (N,) in pixels; masses (N,); colours
    (N, 3) uint8.
    """

    def __init__(self, height: int, width: int, num_balls: int = BallOptions.num_balls,
                 seed: int | None = None, **options: object) -> None:
        known = {f.name for f in fields(BallOptions)} - {"num_balls"}
        unknown = set(options) - known
        if unknown:
            raise ValueError(f"unknown ball option(s) {sorted(unknown)}; known: {sorted(known)}")
        opts = BallOptions(num_balls=num_balls, **options)  # type: ignore[arg-type]
        if int(height) != height or int(width) != width or height <= 0 or width <= 0:
            raise ValueError(f"frame size must be positive integers, got {height}x{width}")
        if int(num_balls) != num_balls or num_balls < 1:
            raise ValueError(f"num_balls must be a positive integer, got {num_balls!r}")
        self.height, self.width = int(height), int(width)
        side = min(self.height, self.width)
        r_lo, r_hi = (side * f for f in _check_range("radius_range", opts.radius_range, 0.0))
        if r_lo < 1.0:
            raise ValueError(f"smallest radius is {r_lo:.2f} px at {height}x{width}; it must be >= 1 px "
                             f"(raise radius_range[0] or the frame size)")
        # Reset places each ball in its own cell of a grid whose cells hold the largest ball.
        self._grid = (int(self.width // (2 * r_hi)), int(self.height // (2 * r_hi)))
        if self._grid[0] * self._grid[1] < num_balls:
            raise ValueError(f"{num_balls} balls of radius up to {r_hi:.1f} px do not fit in a "
                             f"{height}x{width} frame; use fewer or smaller balls")
        if not opts.palette:
            raise ValueError("palette must hold at least one colour")
        self.options = opts
        self.num_balls = int(num_balls)
        self._radius_px = (r_lo, r_hi)
        self._speed_px = tuple(side * f for f in _check_range("speed_range", opts.speed_range, 0.0))
        self._palette = np.array([_check_rgb("palette colour", c) for c in opts.palette], dtype=np.uint8)
        # +0.5 everywhere makes the final float -> uint8 truncation round to nearest (blending is
        # affine, so the offset passes through unchanged).
        self._background = np.array(_check_rgb("background", opts.background), dtype=np.float32) + 0.5
        self._canvas = np.empty((self.height, self.width, 3), dtype=np.float32)
        self._pair_i, self._pair_j = np.triu_indices(self.num_balls, k=1)
        self._rng = np.random.default_rng(seed)
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        """Draw new radii, colours, positions (non-overlapping) and velocities.

        With a seed the generator is re-seeded, so reset(s) reproduces BallDistractor(seed=s);
        without one the current random stream continues (a new layout per episode).
        """
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        rng, n = self._rng, self.num_balls
        self.radii = rng.uniform(*self._radius_px, size=n)
        self.masses = self.radii**2
        replace = n > len(self._palette)
        self.colours = self._palette[rng.choice(len(self._palette), size=n, replace=replace)]
        # One ball per random grid cell, jittered inside it: never overlapping, never stuck.
        cols, rows = self._grid
        cells = rng.choice(cols * rows, size=n, replace=False)
        cell = np.array([self.width / cols, self.height / rows])
        corner = np.stack([cells % cols, cells // cols], axis=1) * cell
        room = cell - 2 * self.radii[:, None]
        self.positions = corner + self.radii[:, None] + rng.uniform(size=(n, 2)) * room
        angle = rng.uniform(0.0, 2 * math.pi, size=n)
        speed = rng.uniform(*self._speed_px, size=n)
        self.velocities = np.stack([np.cos(angle), np.sin(angle)], axis=1) * speed[:, None]
        self._lo = np.repeat(self.radii[:, None], 2, axis=1)
        self._hi = np.array([self.width, self.height], dtype=float) - self._lo
        sums = self.radii[self._pair_i] + self.radii[self._pair_j]
        self._contact2 = (sums - _CONTACT_EPS) ** 2
        self._min_radius = float(self.radii.min())
        self._build_sprites()

    def kinetic_energy(self) -> float:
        """Total kinetic energy sum(m |v|^2) / 2; constant over steps."""
        return 0.5 * float(np.sum(self.masses * np.sum(self.velocities**2, axis=1)))

    def step(self) -> None:
        """Advance one frame, in as many sub-steps as the fastest ball needs."""
        vmax = math.sqrt(float(np.max(np.einsum("ij,ij->i", self.velocities, self.velocities))))
        substeps = max(1, math.ceil(2.0 * vmax / self._min_radius))
        for _ in range(substeps):
            self._advance(1.0 / substeps)

    def _advance(self, dt: float) -> None:
        p, v = self.positions, self.velocities
        p += v * dt
        below, above = p < self._lo, p > self._hi
        out = below | above
        if out.any():
            # Mirror the part of the move that went past the wall: exact elastic bounce.
            np.copyto(p, 2 * self._lo - p, where=below)
            np.copyto(p, 2 * self._hi - p, where=above)
            v[out] *= -1.0
            np.clip(p, self._lo, self._hi, out=p)
        self._collide()

    def _collide(self) -> None:
        """Bounce approaching overlapping pairs, then push every overlapping pair apart.

        Detection is vectorised over all pairs; the (rare) hits are resolved one pair at a time,
        since sequential pairwise impulses conserve energy exactly whereas summed ones do not.
        """
        p, v, m, r = self.positions, self.velocities, self.masses, self.radii
        for _ in range(_CORRECTION_PASSES):
            d = p[self._pair_j] - p[self._pair_i]
            hits = np.flatnonzero(np.einsum("ij,ij->i", d, d) < self._contact2)
            if hits.size == 0:
                return
            for k in hits.tolist():
                i, j = int(self._pair_i[k]), int(self._pair_j[k])
                dx, dy = p[j] - p[i]
                dist = math.hypot(dx, dy)
                overlap = r[i] + r[j] - dist
                if overlap <= 0.0:  # already separated by an earlier pair this sweep
                    continue
                normal = np.array([dx / dist, dy / dist]) if dist > 0.0 else np.array([1.0, 0.0])
                closing = float(np.dot(v[j] - v[i], normal))
                if closing < 0.0:  # approaching: elastic impulse along the normal
                    impulse = 2.0 * closing / (m[i] + m[j]) * normal
                    v[i] += impulse * m[j]
                    v[j] -= impulse * m[i]
                # Positional correction, shared inversely to mass; what a wall stops i from
                # taking goes to j.
                before = p[i].copy()
                p[i] -= overlap * m[j] / (m[i] + m[j]) * normal
                np.clip(p[i], self._lo[i], self._hi[i], out=p[i])
                taken = float(np.dot(before - p[i], normal))
                p[j] += (overlap - taken) * normal
                np.clip(p[j], self._lo[j], self._hi[j], out=p[j])

    def _build_sprites(self) -> None:
        """Precompute each ball's anti-aliased disc at every 1/8-px sub-pixel offset.

        Coverage is clip(r + 0.5 - d, 0, 1), d the distance from a pixel centre to the ball
        centre: a one-pixel linear ramp across the edge. Stored as (1 - coverage) and
        coverage * colour so drawing a ball is two in-place operations on its bounding box.
        """
        q = np.arange(_SUBPIXEL) / _SUBPIXEL
        self._sprites = []
        for radius, colour in zip(self.radii.tolist(), self.colours):
            half = math.ceil(radius + 0.5)
            offsets = np.arange(2 * half + 1) - half + 0.5  # pixel centre minus integer part of x
            delta = offsets[None, :] - q[:, None]  # (Q, S): per sub-pixel offset
            dist = np.sqrt(delta[:, None, :, None] ** 2 + delta[None, :, None, :] ** 2)  # (Qy, Qx, S, S)
            alpha = np.clip(radius + 0.5 - dist, 0.0, 1.0).astype(np.float32)[..., None]
            tint = alpha * (colour.astype(np.float32) + 0.5)
            self._sprites.append((half, 1.0 - alpha, tint))

    def render(self) -> np.ndarray:
        """Draw the balls (in index order) over the background; uint8 (height, width, 3)."""
        canvas = self._canvas
        canvas[...] = self._background
        height, width = self.height, self.width
        size_q = _SUBPIXEL
        centres = np.rint(self.positions * size_q).astype(np.int64).tolist()
        for (gx, gy), (half, keep, tint) in zip(centres, self._sprites):
            ix, qx = divmod(gx, size_q)
            iy, qy = divmod(gy, size_q)
            x0, y0 = ix - half, iy - half
            side = 2 * half + 1
            cx0, cy0 = max(x0, 0), max(y0, 0)
            cx1, cy1 = min(x0 + side, width), min(y0 + side, height)
            if cx0 >= cx1 or cy0 >= cy1:
                continue
            sx, sy = slice(cx0 - x0, cx1 - x0), slice(cy0 - y0, cy1 - y0)
            region = canvas[cy0:cy1, cx0:cx1]
            region *= keep[qy, qx, sy, sx]
            region += tint[qy, qx, sy, sx]
        return canvas.astype(np.uint8)
