"""What each policy interface exports: a torch module with the contract's inputs and outputs, plus
how to feed it random inputs and what the training code answers for them (the parity reference).

One builder per interface (`frame_stack_spec`, `state_spec`, `slac_spec` for both SLAC graphs);
`onnx_export` picks one by algorithm and never looks inside. Every graph takes raw uint8 NHWC frames
and does the layout change and the float conversion itself (the /255 is folded into the first conv,
`RawPixelConvs`), and returns deterministic tanh(mean) actions mapped to the env's bounds.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from export.errors import ExportError
from export.metadata import EnvFacts
from sacae_deploy import contract
from sacae_deploy.actions import ActionBounds, to_agent_units, to_env_units
from sacae_deploy.history import start_history

Inputs = dict[str, np.ndarray]


@dataclass
class GraphSpec:
    """One exportable graph and the means to check it against the training code."""

    module: nn.Module
    interface: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    example: tuple[torch.Tensor, ...]  # batch >= 2 when `dynamic_batch` (a batch-1 example pins the dim)
    dynamic_batch: bool
    frame_stack: int
    image_size: int | None
    sample: Callable[[np.random.Generator, int], Inputs]  # random non-zero inputs (batch 1 unless dynamic)
    reference: Callable[[Inputs], list[np.ndarray]]  # the training code's answer for every output
    metadata: dict[str, str] = field(default_factory=dict)  # interface-specific keys


class ToBounds(nn.Module):
    """Map a tanh action from [-1, 1] to the env's [low, high] with `ActionBounds`' own formula and
    numbers (as DMCEnv.step does); a no-op (no graph node at all) when the bounds are [-1, 1], as for
    every DeepMind Control task."""

    def __init__(self, low: np.ndarray, high: np.ndarray) -> None:
        super().__init__()
        bounds = ActionBounds(low, high)
        self.identity = bounds.identity
        self.register_buffer("scale", torch.as_tensor(bounds.scale))
        self.register_buffer("offset", torch.as_tensor(bounds.offset))

    def forward(self, action: torch.Tensor) -> torch.Tensor:
        """Agent [-1, 1] actions -> the env's units (what the policy file emits)."""
        return action if self.identity else to_env_units(action, self.scale, self.offset)

    def inverse(self, action: torch.Tensor) -> torch.Tensor:
        """Env-unit actions (what a caller passes back) -> the agent's [-1, 1] units."""
        return action if self.identity else to_agent_units(action, self.scale, self.offset)


def action_bounds(facts: EnvFacts) -> ActionBounds:
    """The task's action bounds, as the training env maps actions."""
    return ActionBounds(facts.action_low, facts.action_high)


def env_bounds(action: np.ndarray, facts: EnvFacts) -> np.ndarray:
    """The reference mapping: DMCEnv.step's."""
    return action_bounds(facts).to_env(action)


def agent_units(action: np.ndarray, facts: EnvFacts) -> np.ndarray:
    """env_bounds' inverse, for actions a caller feeds back into a history."""
    return action_bounds(facts).to_unit(action)


class RawPixelConvs(nn.Module):
    """A copy of an encoder's conv stack that takes raw 0..255 pixels: its first conv's weights
    absorb the 1/255 the training encoder applies to its input (conv(x / 255, w) = conv(x, w / 255)
    up to float rounding, zero padding included), so the graph makes no division pass over the
    frames (~7% of SAC+AE's batch-1 latency here)."""

    def __init__(self, net: nn.Sequential) -> None:
        super().__init__()
        self.net = copy.deepcopy(net)
        first = self.net[0]
        if not isinstance(first, nn.Conv2d):
            raise ExportError(f"expected the encoder to start with a Conv2d, found {type(first).__name__}")
        with torch.no_grad():
            first.weight.div_(255.0)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> the conv stack's output, as the training encoder's from the same frames."""
        return self.net(frames.float())


def _bounds(facts: EnvFacts) -> ToBounds:
    return ToBounds(np.asarray(facts.action_low), np.asarray(facts.action_high))


class FrameStackPolicy(nn.Module):
    """uint8 NHWC frames (B, K, H, W, 3), oldest first -> action.

    The layout change yields FrameStack's channel order (block k = frame k, RGB within a block);
    the shared conv trunk (the actor encoder's, `RawPixelConvs`), then the actor's own
    fc/LayerNorm/tanh and MLP give tanh(mean).
    """

    def __init__(self, actor: nn.Module, bounds: ToBounds) -> None:
        super().__init__()
        self.actor, self.bounds = actor, bounds
        self.convs = RawPixelConvs(actor.encoder.trunk.net)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frame stacks (B, K, H, W, C) -> the actor's mean action in env units."""
        b, k, h, w, c = frames.shape
        obs = frames.permute(0, 1, 4, 2, 3).reshape(b, k * c, h, w)
        mu, _ = self.actor.dist_params(self.actor.encoder.head(self.convs(obs)))
        return self.bounds(torch.tanh(mu))


class StatePolicy(nn.Module):
    """float32 state (B, S) -> action (SAC:state's identity encoder + actor MLP)."""

    def __init__(self, actor: nn.Module, bounds: ToBounds) -> None:
        super().__init__()
        self.actor, self.bounds = actor, bounds

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        """States (B, S) -> the actor's mean action in env units."""
        return self.bounds(self.actor.mean_action(state))


def _actor_mean(actor: nn.Module, obs: np.ndarray, facts: EnvFacts) -> list[np.ndarray]:
    with torch.no_grad():
        return [env_bounds(actor.mean_action(torch.as_tensor(obs)).numpy(), facts)]


def training_stack(frames: np.ndarray) -> np.ndarray:
    """(B, K, H, W, 3) -> (B, 3K, H, W) with the training layers' own ops: PixelObservation's
    transpose(2, 0, 1) per frame, then FrameStack's concatenate along channels, oldest first."""
    return np.stack([np.concatenate([f.transpose(2, 0, 1) for f in seq], axis=0) for seq in frames])


def frame_stack_spec(agent: Any, cfg: Any, facts: EnvFacts) -> GraphSpec:
    """SAC+AE and SAC:pixel: the critic's conv trunk (tied into the actor's encoder), the actor's
    own head and MLP."""
    k, size = cfg.frame_stack, cfg.image_size
    module = FrameStackPolicy(agent.actor, _bounds(facts))
    example = torch.randint(0, 256, (2, k, size, size, 3), dtype=torch.uint8)

    def sample(rng: np.random.Generator, batch: int) -> Inputs:
        return {contract.IN_FRAMES: rng.integers(1, 256, (batch, k, size, size, 3), dtype=np.uint8)}

    def reference(inputs: Inputs) -> list[np.ndarray]:
        return _actor_mean(agent.actor, training_stack(inputs[contract.IN_FRAMES]), facts)

    return GraphSpec(module.eval(), contract.I_FRAME_STACK, (contract.IN_FRAMES,), (contract.OUT_ACTION,), (example,),
                     True, frame_stack=k, image_size=size, sample=sample, reference=reference)


def state_spec(agent: Any, cfg: Any, facts: EnvFacts) -> GraphSpec:
    """SAC:state: the actor MLP on the proprioceptive vector."""
    s = facts.state_dim
    module = StatePolicy(agent.actor, _bounds(facts))
    example = torch.randn(2, s)

    def sample(rng: np.random.Generator, batch: int) -> Inputs:
        return {contract.IN_STATE: (rng.standard_normal((batch, s)) + 0.5).astype(np.float32)}

    def reference(inputs: Inputs) -> list[np.ndarray]:
        return _actor_mean(agent.actor, inputs[contract.IN_STATE], facts)

    return GraphSpec(module.eval(), contract.I_STATE, (contract.IN_STATE,), (contract.OUT_ACTION,), (example,), True,
                     frame_stack=1, image_size=None, sample=sample, reference=reference,
                     metadata={contract.K_STATE_DIM: str(s)})


class _SlacPolicy(nn.Module):
    """The model's per-frame encoder (`RawPixelConvs`) and the history-conditioned actor head."""

    def __init__(self, encoder: nn.Module, actor: nn.Module, bounds: ToBounds) -> None:
        super().__init__()
        self.convs, self.actor, self.bounds = RawPixelConvs(encoder.net), actor, bounds

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, h, w) -> (N, F), as FrameEncoder."""
        return self.convs(frames).flatten(1)


class SlacStatelessPolicy(_SlacPolicy):
    """SLAC, whole history per call: frames (B, H, h, w, 3) uint8 and the H-1 actions between them
    (env units, as the caller took them) -> action. Every frame goes through the model's encoder
    (`RawPixelConvs`), then the history-conditioned actor head."""

    def forward(self, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """H frames and the actions taken (env units) -> the next action in env units."""
        b, h, height, width, c = frames.shape
        features = self.encode(frames.reshape(b * h, height, width, c).permute(0, 3, 1, 2)).reshape(b, h, -1)
        return self.bounds(self.actor(features, self.bounds.inverse(actions)))


class SlacStatefulPolicy(_SlacPolicy):
    """SLAC, one frame per call (batch 1): the newest frame is encoded once and the caller carries
    the previous H-1 features and actions (agent units) between calls. With reset=1 the caches are
    replaced by the padding rule (`start_history`: the newest frame's features H times, H-1 zero
    actions), of which the caches hold the H-1 oldest frames."""

    def forward(self, frame: torch.Tensor, feature_cache: torch.Tensor, action_cache: torch.Tensor,
                reset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One frame and the caches -> the action (env units) and the caches for the next call."""
        feature = self.encode(frame.permute(0, 3, 1, 2))[:, None]  # (1, 1, F)
        fresh = reset[:, :, None] > 0.5
        padded, no_actions = start_history(feature, feature_cache.shape[1] + 1, action_cache.shape[2])
        features = torch.cat([torch.where(fresh, torch.cat(padded[:-1], dim=1), feature_cache), feature], dim=1)
        actions = torch.where(fresh, torch.as_tensor(no_actions).to(action_cache), action_cache)
        action = self.actor(features, actions)
        return self.bounds(action), features[:, 1:], torch.cat([actions[:, 1:], action[:, None]], dim=1)


def slac_spec(agent: Any, cfg: Any, facts: EnvFacts, history: str) -> GraphSpec:
    """SLAC: the model's per-frame conv encoder + the actor head over (features (B, H, F),
    actions (B, H-1, A)); `history` picks the stateless or the stateful graph."""
    h, size, a, f = cfg.history_length, cfg.image_size, facts.action_dim, agent.feature_dim
    if h < 2:
        raise ExportError(f"slac export needs history_length >= 2, the run has {h}")
    low, high = np.asarray(facts.action_low, np.float32), np.asarray(facts.action_high, np.float32)
    encoder, actor = agent.encoder, agent.actor

    def training_act(frames: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """SlacAgent.act: frames (H, 3, h, w) oldest first, agent-unit actions (H-1, A)."""
        return env_bounds(agent.act(frames, actions, mean=True), facts)

    if history == "stateless":
        def sample(rng: np.random.Generator, batch: int) -> Inputs:
            return {contract.IN_FRAMES: rng.integers(1, 256, (batch, h, size, size, 3), dtype=np.uint8),
                    contract.IN_ACTIONS: rng.uniform(low, high, (batch, h - 1, a)).astype(np.float32)}

        def reference(inputs: Inputs) -> list[np.ndarray]:
            return [np.stack([training_act(fr.transpose(0, 3, 1, 2), agent_units(ac, facts))
                              for fr, ac in zip(inputs[contract.IN_FRAMES], inputs[contract.IN_ACTIONS])])]

        example = (torch.randint(0, 256, (2, h, size, size, 3), dtype=torch.uint8), torch.rand(2, h - 1, a) * 2 - 1)
        return GraphSpec(SlacStatelessPolicy(encoder, actor, _bounds(facts)).eval(), contract.I_SLAC_STATELESS,
                         (contract.IN_FRAMES, contract.IN_ACTIONS), (contract.OUT_ACTION,), example, True,
                         frame_stack=h, image_size=size, sample=sample, reference=reference)

    def sample_one(rng: np.random.Generator, batch: int) -> Inputs:
        return {contract.IN_FRAME: rng.integers(1, 256, (1, size, size, 3), dtype=np.uint8),
                contract.IN_FEATURE_CACHE: rng.standard_normal((1, h - 1, f)).astype(np.float32),
                contract.IN_ACTION_CACHE: rng.uniform(-1, 1, (1, h - 1, a)).astype(np.float32),
                contract.IN_RESET: np.full((1, 1), float(rng.integers(0, 2)), np.float32)}

    def reference_one(inputs: Inputs) -> list[np.ndarray]:
        """The cache semantics spelled out with the training modules (the rollout check then ties
        the stateful graph to SlacAgent's own HistoryPolicy)."""
        frame = inputs[contract.IN_FRAME][0].transpose(2, 0, 1)
        with torch.no_grad():
            feature = encoder(torch.as_tensor(frame[None])).numpy()  # (1, F)
        if inputs[contract.IN_RESET][0, 0] > 0.5:
            padded, acts = start_history(feature, h, a)
            feats = np.concatenate(padded)
        else:
            feats = np.concatenate([inputs[contract.IN_FEATURE_CACHE][0], feature])
            acts = inputs[contract.IN_ACTION_CACHE][0]
        with torch.no_grad():
            action = actor(torch.as_tensor(feats)[None], torch.as_tensor(acts)[None]).numpy()
        return [env_bounds(action, facts), feats[None, 1:], np.concatenate([acts[1:], action])[None]]

    example = (torch.randint(0, 256, (1, size, size, 3), dtype=torch.uint8), torch.randn(1, h - 1, f),
               torch.rand(1, h - 1, a) * 2 - 1, torch.zeros(1, 1))
    return GraphSpec(SlacStatefulPolicy(encoder, actor, _bounds(facts)).eval(), contract.I_SLAC_STATEFUL,
                     (contract.IN_FRAME, contract.IN_FEATURE_CACHE, contract.IN_ACTION_CACHE, contract.IN_RESET),
                     (contract.OUT_ACTION, contract.OUT_FEATURE_CACHE, contract.OUT_ACTION_CACHE), example, False,
                     frame_stack=h, image_size=size, sample=sample_one, reference=reference_one,
                     metadata={contract.K_FEATURE_DIM: str(f)})
