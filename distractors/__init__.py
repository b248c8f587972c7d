"""Moving-ball distractor backgrounds (SAC+AE section 5.2, figure 7), numpy only.

BallDistractor simulates and draws the balls; composite.py turns a MuJoCo segmentation render
(or a colour key) into a background mask and pastes the balls behind the robot; frames.py says
what a camera frame is (the runtime holds frames to it too). The lowest layer: imports no other
part of the project.
"""

from .balls import DEFAULT_PALETTE, BallDistractor, BallOptions
from .composite import (
    DISTRACTORS,
    DistractorCompositor,
    SimulatedBackground,
    background_mask_from_segmentation,
    colour_key_mask,
    composite,
    floor_geom_ids,
    make_background,
    render_with_distractor,
)

__all__ = [
    "DEFAULT_PALETTE",
    "BallDistractor",
    "BallOptions",
    "DistractorCompositor",
    "SimulatedBackground",
    "DISTRACTORS",
    "make_background",
    "background_mask_from_segmentation",
    "colour_key_mask",
    "composite",
    "floor_geom_ids",
    "render_with_distractor",
]
