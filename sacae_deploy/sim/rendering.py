"""Pick a headless OpenGL backend for MuJoCo before dm_control is imported.

MuJoCo reads MUJOCO_GL once, at import, so the choice is probed in a subprocess: EGL first
(GPU or Mesa), then OSMesa. A user's own MUJOCO_GL is always respected.
"""

from __future__ import annotations

import os
import subprocess
import sys

from sacae_deploy.errors import ConfigError, SacaeError

_PROBE = (
    "from dm_control import _render\n"
    "ctx = _render.Renderer(max_width=8, max_height=8)\n"
    "ctx.free()\n"
)
_FIX = (
    "no headless OpenGL for MuJoCo: install EGL (Debian: libegl1 libgl1) or OSMesa "
    "(Debian: libosmesa6), or set MUJOCO_GL yourself"
)


# Frames are rendered square into MuJoCo's offscreen framebuffer, 640x480 in the DeepMind Control
# models (a larger render is an error deep inside dm_control), hence at most 480 pixels.
MAX_RENDER_SIZE = 480


def check_render_size(image_size: int) -> None:
    """A policy's frames must fit the framebuffer for the simulator (`sacae run --source dmc`, `sacae eval`)."""
    if image_size > MAX_RENDER_SIZE:
        raise ConfigError(f"the simulator renders at most {MAX_RENDER_SIZE}x{MAX_RENDER_SIZE} frames (MuJoCo's "
                          f"offscreen framebuffer); this policy takes {image_size}x{image_size}")


class RenderingUnavailable(SacaeError, RuntimeError):
    """Neither EGL nor OSMesa can create a context."""


def _works(backend: str) -> bool:
    env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def ensure_gl() -> str:
    """Return the backend in use, choosing one (EGL, then OSMesa) if the user set none."""
    chosen = os.environ.get("MUJOCO_GL")
    if chosen:
        os.environ.setdefault("PYOPENGL_PLATFORM", chosen)
        return chosen
    for backend in ("egl", "osmesa"):
        if _works(backend):
            os.environ["MUJOCO_GL"] = backend
            os.environ["PYOPENGL_PLATFORM"] = backend
            return backend
    raise RenderingUnavailable(_FIX)
