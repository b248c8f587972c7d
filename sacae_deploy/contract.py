"""The ONNX policy contract, shared by the exporter (`export/`) and the runtime (`sacae_deploy.Policy`).

A policy file is self-describing: its graph takes raw uint8 camera frames (or a float32 state) and
returns actions already in the environment's bounds; everything a caller needs to drive it lives in
`metadata_props` under the keys below (all values are strings; lists and numbers are JSON).

Graph interfaces (batch dimension first, fixed to 1 for `stateful`):
- frame-stack policies (sac-ae, sac-pixel):
    in  `frames`  uint8 (B, FRAME_STACK, H, W, 3)  oldest first (HWC frames as a camera gives them)
    out `action`  float32 (B, A)
- state policies (sac-state):
    in  `state`   float32 (B, S)
    out `action`  float32 (B, A)
- SLAC `stateless`:
    in  `frames`  uint8 (B, HISTORY, H, W, 3)   the last HISTORY frames, oldest first
    in  `actions` float32 (B, HISTORY-1, A)     the actions taken between them, oldest first
    out `action`  float32 (B, A)
- SLAC `stateful` (one frame is encoded per call; caches carried by the caller):
    in  `frame`          uint8 (B, H, W, 3)      the newest frame
    in  `feature_cache`  float32 (B, HISTORY-1, F)   conv features of the previous HISTORY-1 frames
    in  `action_cache`   float32 (B, HISTORY-1, A)   the previous HISTORY-1 actions
    out `action`, `feature_cache_out`, `action_cache_out` (the caches to pass back next call)
    At reset pass `reset=1` (in `reset` float32 (B, 1)): the graph then fills the feature cache with
    the newest frame's features and zeros the action cache (the padding rule), exactly as training did.
"""

from __future__ import annotations

FORMAT_VERSION = "1"

# Input / output names.
IN_FRAMES = "frames"
IN_STATE = "state"
IN_ACTIONS = "actions"
IN_FRAME = "frame"
IN_FEATURE_CACHE = "feature_cache"
IN_ACTION_CACHE = "action_cache"
IN_RESET = "reset"
OUT_ACTION = "action"
OUT_FEATURE_CACHE = "feature_cache_out"
OUT_ACTION_CACHE = "action_cache_out"

# metadata_props keys.
K_FORMAT = "sacae.format_version"
K_ALGO = "sacae.algo"  # sac-ae | sac-pixel | sac-state | slac
K_ENV = "sacae.env"  # DOMAIN-TASK
K_INTERFACE = "sacae.interface"  # frame_stack | state | slac_stateless | slac_stateful
K_ACTION_DIM = "sacae.action_dim"
K_ACTION_LOW = "sacae.action_low"  # JSON list
K_ACTION_HIGH = "sacae.action_high"  # JSON list
K_ACTION_REPEAT = "sacae.action_repeat"
K_FRAME_STACK = "sacae.frame_stack"  # frames per decision (sac: stack; slac: history length)
K_IMAGE_SIZE = "sacae.image_size"  # H == W
K_IMAGE_LAYOUT = "sacae.image_layout"  # "NHWC uint8 RGB" (conversion and /255 are inside the graph)
K_STATE_DIM = "sacae.state_dim"
K_PADDING = "sacae.history_padding"  # how the history is filled at an episode start
K_CONTROL_TIMESTEP = "sacae.control_timestep"  # seconds per physics/control step (one camera frame)
K_TRAIN_ENV_STEPS = "sacae.training_env_steps"
K_FEATURE_DIM = "sacae.feature_dim"  # SLAC stateful cache width
K_EXPORTER = "sacae.exporter"  # dynamo | legacy
K_OPSET = "sacae.opset"
K_TORCH_VERSION = "sacae.torch_version"
K_SACAE_VERSION = "sacae.version"
K_CAMERA_ID = "sacae.camera_id"  # the dm_control camera the policy was trained on

REQUIRED_KEYS = (K_FORMAT, K_ALGO, K_ENV, K_INTERFACE, K_ACTION_DIM, K_ACTION_LOW, K_ACTION_HIGH,
                 K_ACTION_REPEAT, K_FRAME_STACK, K_IMAGE_SIZE, K_IMAGE_LAYOUT, K_PADDING, K_CONTROL_TIMESTEP)

I_FRAME_STACK, I_STATE, I_SLAC_STATELESS, I_SLAC_STATEFUL = "frame_stack", "state", "slac_stateless", "slac_stateful"
INTERFACES = (I_FRAME_STACK, I_STATE, I_SLAC_STATELESS, I_SLAC_STATEFUL)
EXPORTERS = ("dynamo", "legacy")

IMAGE_LAYOUT = "NHWC uint8 RGB"
# Training and acting both start an episode's history by repeating its first frame and zeroing the
# actions before it (SLAC's original rule; SAC+AE's frame stack repeats the first frame the same way).
PADDING_RULE = "repeat_first_frame_zero_actions"
# State policies keep no history: frame_stack is 1, image_size is JSON null, layout and padding are "none".
NO_IMAGE = "none"
OPSET = 18
# Seeds the CLI and configs take: dm_control's tasks take numpy legacy seeds (< 2**32), and episode
# and eval seeds count up from the one given.
MAX_SEED = 2**31 - 1
