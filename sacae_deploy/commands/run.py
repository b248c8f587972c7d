"""`sacae run`: drive an exported ONNX policy on a camera-like frame stream, torch-free."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer

from sacae_deploy import interrupts
from sacae_deploy.commands.common import Device, Distractors, user_errors
from sacae_deploy.contract import MAX_SEED
from sacae_deploy.files import atomic_write_text
from sacae_deploy.outputs import check_output_file
from sacae_deploy.policy import MAX_THREADS
from sacae_deploy.sources import FrameSource
from sacae_deploy.video import VIDEO_SUFFIXES


class Recorder:
    """--record: the mp4/gif is opened on the first frame, so a stream that ends at once leaves no
    empty file behind and the size is the source's own."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.fps = path, fps
        self._writer: Any = None

    def append(self, frame: Any) -> None:
        if self._writer is None:
            from sacae_deploy.video import VideoWriter

            self._writer = VideoWriter(self.path, self.fps)
        self._writer.append(frame)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class BetweenFrames(FrameSource):
    """The source, with SIGINT/SIGTERM let through only while the loop waits for its next frame
    (sacae_deploy.interrupts): every frame is recorded, acted on, logged and counted whole or not
    at all, so the recording, the JSON lines and the summary agree frame for frame."""

    def __init__(self, source: FrameSource) -> None:
        self._source = source
        self.episodic, self.fps = source.episodic, source.fps

    @property  # type: ignore[override]
    def episode(self) -> int:
        return self._source.episode

    @property
    def episode_returns(self) -> list[float] | None:
        return getattr(self._source, "episode_returns", None)

    def apply(self, action: Any) -> float | None:
        return self._source.apply(action)

    def __iter__(self) -> Iterator[Any]:
        frames = iter(self._source)
        while True:
            with interrupts.allowed():
                frame = next(frames, None)
            if frame is None:
                return
            yield frame


def print_summary(summary: Any, source: str) -> None:
    """A small table on stderr (stdout may be carrying the JSON lines)."""
    from rich.console import Console
    from rich.table import Table

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f} ms"

    lat = summary.latency_ms
    table = Table(title=f"sacae run {source}", show_header=False, title_justify="left")
    rows = [
        ("frames", f"{summary.frames:,}"),
        ("decisions", f"{summary.decisions:,} (action repeat {summary.action_repeat})"),
        ("latency p50 / p95 / p99", f"{ms(lat['p50'])} / {ms(lat['p95'])} / {ms(lat['p99'])}"),
        ("latency max", ms(lat["max"])),
        ("effective rate", f"{summary.rate_hz:,.1f} frames/s"
                           + (f" (target {1.0 / summary.control_timestep:,.1f})" if summary.realtime else "")),
    ]
    if summary.realtime:
        rows.append(("overruns / late decisions", f"{summary.overruns:,} / {summary.late_decisions:,}"))
    if summary.clipped:
        rows.append(("clipped to bounds", f"{summary.clipped:,} decisions"))
    if summary.episode_returns:
        rows.append(("episode returns", ", ".join(f"{r:.1f}" for r in summary.episode_returns)))
    if summary.partial_return is not None:
        rows.append(("unfinished episode", f"{summary.partial_return:.1f} so far"))
    if summary.interrupted:
        stop = interrupts.received()
        rows.append(("ended by", stop.signal_name if stop is not None else "Ctrl-C or a closed output pipe"))
    for key, value in rows:
        table.add_row(key, value)
    Console(stderr=True).print(table)


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def run(
        policy: Annotated[Path, typer.Argument(help="Exported policy (.onnx from `sacae export`, or a run directory holding policy.onnx).")],
        source: Annotated[str, typer.Option(help="dmc:DOMAIN-TASK (simulated camera; 'dmc' = the policy's task), "
                                                 "video:PATH, images:DIR or camera:INDEX.")],
        episodes: Annotated[Optional[int], typer.Option(min=1, help="dmc: episodes of 1000 control steps (default 1).")] = None,
        jsonl: Annotated[Optional[str], typer.Option(help="Write one JSON line per frame to PATH, or '-' for stdout.")] = None,
        record: Annotated[Optional[Path], typer.Option(help="Write the frames the source delivered (original size) to an .mp4 or .gif.")] = None,
        realtime: Annotated[bool, typer.Option("--realtime", help="Pace frames at the policy's control timestep (deadlines, overruns).")] = False,
        action_repeat: Annotated[Optional[int], typer.Option(min=1, help="Decide every K frames (default: the policy's training value).")] = None,
        device: Annotated[Device, typer.Option(help="Where ONNX Runtime runs the policy.")] = Device.auto,
        threads: Annotated[Optional[int], typer.Option(min=1, max=MAX_THREADS, help=f"ONNX Runtime intra-op threads, at most the {MAX_THREADS} cores (default: the Policy's).")] = None,
        spin: Annotated[bool, typer.Option("--spin/--no-spin", help="Let ONNX Runtime's threads spin-wait between decisions: the lowest latency on cores of its own; --no-spin where other work shares the cores (fewer stalls at p99).")] = True,
        max_frames: Annotated[Optional[int], typer.Option(min=1, help="Stop after N frames.")] = None,
        seed: Annotated[Optional[int], typer.Option(min=0, max=MAX_SEED, help="dmc: seed of the task (episode e starts from seed + e; default 0).")] = None,
        summary_json: Annotated[Optional[Path], typer.Option(help="Also write the summary as JSON to PATH.")] = None,
        distractors: Annotated[Distractors, typer.Option(help="dmc: replace the background with moving balls (robustness check).")] = Distractors.none,
    ) -> None:
        """Run an exported policy on a frame stream: a decision every action-repeat frames, the action held in between.
        Ctrl-C or SIGTERM ends the run between two frames with the recording, JSON lines and summary
        complete (exit code 130 or 143)."""
        run_policy(policy, source, episodes=episodes, jsonl=jsonl, record=record, realtime=realtime,
                   action_repeat=action_repeat, device=device.value, threads=threads, spin=spin,
                   max_frames=max_frames, seed=seed, summary_json=summary_json, distractors=distractors.value)


def run_policy(policy: Path, source: str, *, episodes: int | None = None, jsonl: str | None = None,
               record: Path | None = None, realtime: bool = False, action_repeat: int | None = None,
               device: str = "auto", threads: int | None = None, spin: bool = True, max_frames: int | None = None,
               seed: int | None = None, summary_json: Path | None = None, distractors: str = "none") -> Any:
    """`sacae run` without the CLI (the demo calls it too); returns the loop's Summary. Output paths
    are checked first. A SIGINT/SIGTERM (under the CLI's handler) stops the loop between frames; the
    files are finished and the summary printed before it is raised again."""
    from sacae_deploy.contract import K_CAMERA_ID
    from sacae_deploy.policy import Policy
    from sacae_deploy.run_loop import JsonLines, RunError, run_loop
    from sacae_deploy.sources import DMCSource, open_source

    if jsonl is not None and jsonl != "-":
        check_output_file(Path(jsonl), "--jsonl")
    if record is not None:
        check_output_file(record, "--record", VIDEO_SUFFIXES)
    if summary_json is not None:
        check_output_file(summary_json, "--summary-json")
    pol = Policy.load(policy, device=device, threads=threads, spin=spin)
    if not pol.image_size:
        raise RunError(f"model {policy} is a {pol.algo} policy on states; `sacae run` needs a pixel policy")
    src = open_source(source, image_size=pol.image_size, default_env=pol.env, seed=seed, episodes=episodes,
                      camera_id=int(pol.metadata.get(K_CAMERA_ID, 0)), distractors=distractors,
                      frames_per_step=action_repeat or pol.action_repeat)
    closers: list[Any] = [src]
    with interrupts.held():  # signals reach the loop only between frames, the rest once all is written
        try:
            if isinstance(src, DMCSource):
                if src.action_dim != pol.action_dim:
                    raise RunError(f"{source} takes {src.action_dim}-d actions; the policy gives {pol.action_dim}-d")
                if src.env_name != pol.env:
                    typer.echo(f"warning: the policy was trained on {pol.env}, running it on {src.env_name}", err=True)
            on_frame = None
            if jsonl is not None:
                on_frame = JsonLines(jsonl)
                closers.append(on_frame)
            recorder = None
            if record is not None:
                recorder = Recorder(record, fps=src.fps or 1.0 / pol.control_timestep)
                closers.append(recorder)

            typer.echo(pol.describe(), err=True)

            def episode_end(episode: int, total: float) -> None:
                typer.echo(f"episode {episode}: return {total:.1f}", err=True)

            summary = run_loop(pol, BetweenFrames(src), action_repeat=action_repeat, realtime=realtime,
                               max_frames=max_frames, on_frame=on_frame, record=recorder.append if recorder else None,
                               on_episode_end=episode_end)
        finally:
            for closer in reversed(closers):
                closer.close()
        print_summary(summary, source)
        if summary_json is not None:
            summary_json.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(summary_json, json.dumps({"source": source, "policy": str(policy), **summary.to_dict()},
                                                       indent=2, allow_nan=False) + "\n")
    stop = interrupts.received()
    if stop is not None:  # the loop ended at it: exit as the signal asked, every file finished
        raise stop
    return summary
