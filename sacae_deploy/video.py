"""Video and GIF writing (imageio), shared by training's eval videos and `sacae run --record`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from sacae_deploy import interrupts
from sacae_deploy.outputs import check_output_file

VIDEO_SUFFIXES = (".mp4", ".gif")  # what VideoWriter writes; output paths are checked against it


class VideoWriter:
    """Stream RGB uint8 frames (H, W, 3) to an mp4/gif, written to a temp name and renamed when closed.

    Appending and closing are held against SIGINT/SIGTERM (sacae_deploy.interrupts): a signal
    inside imageio's ffmpeg writer kills ffmpeg, and the mp4 loses its index (unplayable)."""

    def __init__(self, path: Path | str, fps: float) -> None:
        import imageio.v2 as imageio

        self.path = check_output_file(Path(path), "video", VIDEO_SUFFIXES)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.stem}.tmp{self.path.suffix}")
        if self.path.suffix.lower() == ".gif":
            self._writer = imageio.get_writer(self._tmp, mode="I", duration=1000.0 / fps, loop=0)
        else:
            # macro_block_size=1: any frame size (84x84 is not a multiple of 16).
            self._writer = imageio.get_writer(self._tmp, fps=fps, macro_block_size=1, quality=8)

    def append(self, frame: np.ndarray) -> None:
        """Encode one frame, shielded from SIGINT/SIGTERM."""
        with interrupts.held():
            self._writer.append_data(np.ascontiguousarray(frame))

    def close(self) -> None:
        """Finish the file and move it to its final name, shielded from SIGINT/SIGTERM."""
        with interrupts.held():
            self._writer.close()
            os.replace(self._tmp, self.path)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_video(path: Path | str, frames: Iterable[np.ndarray], fps: float) -> None:
    """The whole video, held: a signal meanwhile is raised once the file is complete."""
    with interrupts.held(), VideoWriter(path, fps) as writer:
        for frame in frames:
            writer.append(frame)
