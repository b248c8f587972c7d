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
# Most sweeps over the pairs per sub-step; one is enough unless a push creates a new overlap
# (a cluster of balls, or one pinned at a wall).
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
    step is split into sub-steps so that no ball moves further than the smallest radius per
    sub-step (no tunnelling); overlaps left after a collision are removed by moving the pair
    apart along the contact normal, which changes no velocity and hence no energy.

    Attributes: positions (N, 2) centres, x then y, in pixels, and velocities (N, 2) in pixels
    per step, both updated in place by step (and may be edited between steps); radii (N,) in
    pixels, masses (N,) and colours (N, 3) uint8, fixed until the next reset (the collision and
    sprite tables are built from them there).
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
        self._background = np.array(_check_rgb("background", opts.background), dtype=np.float64)
        # The +0.5 makes render's final float -> uint8 truncation round to nearest.
        self._background_image = np.empty((self.height, self.width, 3), dtype=np.float32)
        self._background_image[...] = self._background + 0.5
        self._canvas = np.empty_like(self._background_image)
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
        self._radius_list = self.radii.tolist()
        self._min_radius = min(self._radius_list)
        m = self.masses.tolist()
        # Per pair: ids, squared detection distance, contact distance, and each ball's share
        # m_other / (m_i + m_j) of the impulse and of the push.
        self._pairs = [
            (i, j, (r_i + r_j - _CONTACT_EPS) ** 2, r_i + r_j, m[j] / (m[i] + m[j]), m[i] / (m[i] + m[j]))
            for i, r_i in enumerate(self._radius_list)
            for j, r_j in enumerate(self._radius_list)
            if i < j
        ]
        self._build_sprites()

    def kinetic_energy(self) -> float:
        """Total kinetic energy sum(m |v|^2) / 2; constant over steps."""
        return 0.5 * float(np.sum(self.masses * np.sum(self.velocities**2, axis=1)))

    def step(self) -> None:
        """Advance one frame, in as many sub-steps as the fastest ball needs.

        A sub-step moves no ball further than the smallest radius, so a pair closes by less
        than the sum of its radii: overlapping centres never pass each other (no tunnelling)
        and the contact normal keeps its direction.
        The maths runs on Python floats: with a handful of balls, numpy's per-call overhead
        (about 1 us per operation) costs several times more than the arithmetic itself.
        """
        p, v = self.positions.tolist(), self.velocities.tolist()
        vmax = math.sqrt(max(vx * vx + vy * vy for vx, vy in v))
        substeps = max(1, math.ceil(vmax / self._min_radius))
        dt = 1.0 / substeps
        width, height = self.width, self.height
        for _ in range(substeps):
            for pk, vk, r in zip(p, v, self._radius_list):
                x, y = pk[0] + vk[0] * dt, pk[1] + vk[1] * dt
                # Mirror the part of a move that went past a wall: an exact elastic bounce.
                # The clamps only matter for a ball nearly as wide as the frame.
                if x < r:
                    x, vk[0] = min(2 * r - x, width - r), -vk[0]
                elif x > width - r:
                    x, vk[0] = max(2 * (width - r) - x, r), -vk[0]
                if y < r:
                    y, vk[1] = min(2 * r - y, height - r), -vk[1]
                elif y > height - r:
                    y, vk[1] = max(2 * (height - r) - y, r), -vk[1]
                pk[0], pk[1] = x, y
            self._collide(p, v)
        self.positions[...] = p
        self.velocities[...] = v

    def _collide(self, p: list[list[float]], v: list[list[float]]) -> None:
        """Bounce approaching overlapping pairs and push every overlapping pair apart.

        Pairs are resolved one at a time (sequential pairwise impulses conserve energy exactly;
        summed simultaneous ones do not). The push is shared inversely to mass; what a wall
        stops one ball from taking goes to the other (and back once), and sweeps repeat until
        no pair overlaps.
        """
        width, height = self.width, self.height
        for _ in range(_CORRECTION_PASSES):
            clean = True
            for i, j, contact2, contact, share_i, share_j in self._pairs:
                pi, pj = p[i], p[j]
                dx, dy = pj[0] - pi[0], pj[1] - pi[1]
                dist2 = dx * dx + dy * dy
                if dist2 >= contact2:
                    continue
                clean = False
                dist = math.sqrt(dist2)
                nx, ny = (dx / dist, dy / dist) if dist > 0.0 else (1.0, 0.0)
                vi, vj = v[i], v[j]
                closing = (vj[0] - vi[0]) * nx + (vj[1] - vi[1]) * ny
                if closing < 0.0:  # approaching: 1-D elastic collision along the normal
                    vi[0] += 2 * share_i * closing * nx
                    vi[1] += 2 * share_i * closing * ny
                    vj[0] -= 2 * share_j * closing * nx
                    vj[1] -= 2 * share_j * closing * ny
                overlap = contact - dist
                ri, rj = self._radius_list[i], self._radius_list[j]
                xi = min(max(pi[0] - share_i * overlap * nx, ri), width - ri)
                yi = min(max(pi[1] - share_i * overlap * ny, ri), height - ri)
                rest = overlap - ((pi[0] - xi) * nx + (pi[1] - yi) * ny)
                xj = min(max(pj[0] + rest * nx, rj), width - rj)
                yj = min(max(pj[1] + rest * ny, rj), height - rj)
                rest -= (xj - pj[0]) * nx + (yj - pj[1]) * ny
                pj[0], pj[1] = xj, yj
                pi[0] = min(max(xi - rest * nx, ri), width - ri)
                pi[1] = min(max(yi - rest * ny, ri), height - ri)
            if clean:
                return

    def _build_sprites(self) -> None:
        """Precompute each ball's anti-aliased disc at every 1/8-px sub-pixel offset.

        Coverage is clip(r + 0.5 - d, 0, 1), d the distance from a pixel centre to the ball
        centre: a one-pixel linear ramp across the edge. A sprite stores
        coverage * (colour - background), so drawing a ball is one in-place addition on its
        bounding box.
        """
        q = np.arange(_SUBPIXEL) / _SUBPIXEL
        self._sprites = []
        for radius, colour in zip(self._radius_list, self.colours):
            half = math.ceil(radius + 0.5)
            offsets = np.arange(2 * half + 1) - half + 0.5  # pixel centre minus integer part of x
            delta = offsets[None, :] - q[:, None]  # (Q, S): per sub-pixel offset
            dist = np.sqrt(delta[:, None, :, None] ** 2 + delta[None, :, None, :] ** 2)  # (Qy, Qx, S, S)
            coverage = np.clip(radius + 0.5 - dist, 0.0, 1.0)[..., None]
            tint = colour - self._background
            self._sprites.append((half, (coverage * tint).astype(np.float32)))

    def render(self) -> np.ndarray:
        """Draw the balls over the background; uint8 (height, width, 3).

        Coverages add up (background + sum of coverage * (colour - background)) instead of
        being painted one over another: identical wherever discs do not overlap, which the
        physics guarantees to within a pixel, and a single numpy operation per ball.
        """
        canvas = self._canvas
        np.copyto(canvas, self._background_image)
        height, width = self.height, self.width
        for (x, y), (half, sprite) in zip(self.positions.tolist(), self._sprites):
            ix, qx = divmod(int(x * _SUBPIXEL + 0.5), _SUBPIXEL)
            iy, qy = divmod(int(y * _SUBPIXEL + 0.5), _SUBPIXEL)
            x0, y0 = ix - half, iy - half
            side = 2 * half + 1
            cx0, cy0 = max(x0, 0), max(y0, 0)
            cx1, cy1 = min(x0 + side, width), min(y0 + side, height)
            if cx0 < cx1 and cy0 < cy1:
                canvas[cy0:cy1, cx0:cx1] += sprite[qy, qx, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
        # Touching discs share anti-aliased edge pixels whose coverages may sum past 1.
        np.clip(canvas, 0.5, 255.5, out=canvas)
        return canvas.astype(np.uint8)
