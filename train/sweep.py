"""`sacae sweep`: algo x task x seed grids of ordinary training runs, as Ray Tune trials.

A trial is the same code as `sacae train --resume` (resolve_run + Workspace) run in a Ray worker,
writing one ordinary run folder, OUT/trials/ALGO/ENV/seed_S. Fault tolerance is the project's own
checkpointing: Ray retries a trial whose process died and the retry resumes from the folder's last
published checkpoint; a sweep restarted with --resume skips the trials whose final checkpoint is
published and resumes the others. Ray is imported only when a sweep runs (the `sweep` extra).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from sacae_deploy.errors import SacaeError
from sacae_deploy.files import atomic_write_text
from sacae_deploy.outputs import check_output_dir
from train.report import SWEEP_FILE, checkpoint_step

TRIALS = "trials"
INSTALL_HINT = "sacae sweep needs Ray: pip install 'sacae-deploy[sweep]' (or pip install 'ray[tune]')"
MAX_FAILURES = 3  # Ray retries of one trial (each resumes from the trial's last checkpoint)
CONNECT_TIMEOUT_S = 5.0
# Test hook: "ALGO/ENV/seed_S@STEP" makes that trial's process exit once, at the first progress report
# at or after STEP (a marker file in the trial folder keeps the retry alive), to test Ray's retry.
DIE_HOOK = "SACAE_SWEEP_TEST_DIE"
DIE_MARKER = ".sweep_test_died"
TRIAL_ERROR = ".sweep_error"  # a trial's one-line error that no retry can fix (read by the driver)
# Ray's own chatter off the terminal (set before Ray is imported; --verbose keeps Ray's defaults).
QUIET_RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # no result.json / TensorBoard copies: the trial folder is the truth
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",  # keeps Ray's FutureWarning away; trials name their device
}


class SweepError(SacaeError, RuntimeError):
    """A sweep that cannot start or finish: bad grid, Ray missing or unreachable, failed trials."""


@dataclass(frozen=True)
class Trial:
    algo: str
    env: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.algo}/{self.env}/seed_{self.seed}"

    def folder(self, root: Path) -> Path:
        return root / TRIALS / self.algo / self.env / f"seed_{self.seed}"


@dataclass
class SweepSpec:
    """Everything `sacae sweep` was asked; the trials' configs are resolved from it by `plan`."""

    algos: list[str]
    envs: list[str]
    seeds: int
    out: Path
    env_steps: int | None = None
    preset: str = "paper"
    sets: list[str] = field(default_factory=list)
    distractors: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    max_concurrent: int | None = None
    address: str | None = None
    storage: str | None = None
    resume: bool = False
    verbose: bool = False

    @property
    def root(self) -> Path:
        """Where trial folders live: --storage when joining a cluster (every node mounts it), else --out."""
        return Path(self.storage).absolute() if self.storage else self.out.absolute()

    def trials(self) -> list[Trial]:
        return [Trial(a, e, s) for a in self.algos for e in self.envs for s in range(1, self.seeds + 1)]

    def trial_args(self) -> dict[str, Any]:
        """What each trial passes to resolve_run besides its algo, env, seed and folder."""
        sets = list(self.sets)
        if not any(s.partition("=")[0].strip() == "threads" for s in sets):
            sets.append(f"threads={max(1, math.floor(self.cpus_per_run))}")  # torch threads = the trial's CPUs
        return {"env_steps": self.env_steps, "preset": self.preset, "sets": sets, "distractors": self.distractors,
                "device": "cuda" if self.gpus_per_run > 0 else "cpu"}


@dataclass
class PlannedTrial:
    trial: Trial
    folder: Path
    env_steps: int
    done: bool


def split_list(text: str, what: str) -> list[str]:
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise SweepError(f"--{what} {text!r}: expected a comma-separated list")
    return list(dict.fromkeys(items))


def _check_storage(spec: SweepSpec) -> None:
    if spec.address and not spec.storage:
        raise SweepError("--address needs --storage: a path every node of the cluster mounts, for the trial folders")
    if spec.storage and "://" in spec.storage:
        raise SweepError(f"--storage {spec.storage}: trial folders need a file path every node mounts "
                         "(e.g. an NFS path), not a URI")


def _non_empty(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def plan(spec: SweepSpec) -> list[PlannedTrial]:
    """Validate the whole grid before anything starts (every algo, task and --set key, the output
    folders) and say which trials are already finished."""
    from train.runs import resolve_run

    if spec.seeds < 1:
        raise SweepError(f"--seeds must be at least 1, got {spec.seeds}")
    if spec.cpus_per_run <= 0 or spec.gpus_per_run < 0:
        raise SweepError("--cpus-per-run must be positive and --gpus-per-run non-negative")
    if spec.max_concurrent is not None and spec.max_concurrent < 1:
        raise SweepError(f"--max-concurrent must be at least 1, got {spec.max_concurrent}")
    _check_storage(spec)
    check_output_dir(spec.out, "--out")
    if spec.storage:
        check_output_dir(spec.root, "--storage")
    if not spec.resume:
        for folder in {spec.out, spec.root}:
            if _non_empty(folder):
                raise SweepError(f"{folder} is not empty; pass --resume to continue that sweep or choose a new --out")
    args = spec.trial_args()
    planned = []
    for trial in spec.trials():
        folder = trial.folder(spec.root)
        cfg = resolve_run(trial.algo, trial.env, folder, args["env_steps"], trial.seed, args["preset"], args["sets"],
                          args["device"], True, args["distractors"])
        planned.append(PlannedTrial(trial, folder, cfg.env_steps, checkpoint_step(folder) >= cfg.env_steps))
    return planned


def run_trial(config: dict[str, Any], common: dict[str, Any]) -> None:
    """One trial inside a Ray worker: `sacae train --resume` on its folder, each progress report
    (episodes and eval rows) forwarded to Ray Tune."""
    from ray import tune

    from train.runs import resolve_run
    from train.workspace import Workspace

    trial = Trial(**config["trial"])
    folder = trial.folder(Path(common["root"]))
    cfg = resolve_run(trial.algo, trial.env, folder, common["env_steps"], trial.seed, common["preset"],
                      common["sets"], common["device"], True, common["distractors"])
    die_at = _die_step(trial)
    last: dict[str, Any] = {"eval_return": None, "eval_step": None, "steps_per_s": 0.0}

    def progress(env_step: int, info: dict[str, Any]) -> None:
        if "message" in info:  # notices go to the worker's log (on the terminal with --verbose)
            print(info["message"], file=sys.stderr, flush=True)
            return
        if die_at is not None and env_step >= die_at and not (folder / DIE_MARKER).exists():
            (folder / DIE_MARKER).write_text(str(env_step))
            os._exit(17)
        if "eval_return" in info:
            last.update(eval_return=float(info["eval_return"]), eval_step=env_step)
        if "steps_per_s" in info:
            last["steps_per_s"] = float(info["steps_per_s"])
        tune.report({"env_step": env_step, "env_steps": cfg.env_steps, **last})

    error_file = folder / TRIAL_ERROR
    error_file.unlink(missing_ok=True)
    try:
        Workspace(cfg, folder, resume=True).run(progress)
    except SacaeError as exc:  # the run's own one-line error (a damaged checkpoint, a bad value): a
        atomic_write_text(error_file, f"{exc}\n")  # retry would fail the same way, so none is made


def _die_step(trial: Trial) -> int | None:
    name, _, step = os.environ.get(DIE_HOOK, "").partition("@")
    return int(step) if name == trial.name and step else None


def _check_reachable(address: str) -> bool:
    """Fail in seconds, not after Ray's half minute of retries, when no Ray cluster answers at
    HOST:PORT: its GCS must answer a cluster-id request, or refuse it for want of Ray's auth token
    (then True: the cluster needs the token), which a closed port, a dead host or a proxy that
    accepts any connection does not."""
    if address == "auto":
        return False
    parsed = urlparse(address if "://" in address else f"gcs://{address}")
    if not parsed.hostname or not parsed.port or parsed.scheme not in ("gcs", "ray"):
        raise SweepError(f"--address {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    if parsed.scheme == "ray":  # the Ray Client server: a listening port is all we can check cheaply
        try:
            socket.create_connection((parsed.hostname, parsed.port), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as exc:
            raise SweepError(f"--address {address}: no Ray cluster reachable ({exc.strerror or exc})") from None
        return False
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(f"{parsed.hostname}:{parsed.port}") as channel:
        try:
            gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
                gcs_service_pb2.GetClusterIdRequest(), timeout=CONNECT_TIMEOUT_S)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                return True
            raise SweepError(f"--address {address}: no Ray cluster reachable ({exc.code().name}: "
                             f"{_first_line(Exception(exc.details() or ''))})") from None
    return False


def start_ray(spec: SweepSpec) -> None:
    """Embedded Ray on this machine's cores, or join the cluster at --address; quiet unless --verbose."""
    if not spec.verbose:
        for key, value in QUIET_RAY_ENV.items():
            os.environ.setdefault(key, value)
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"  # trials use absolute paths; keep the user's cwd
    if not spec.address:
        # Ray starts its workers at nice 15; a trial is the work itself, and at nice 15 it got ~6% of a
        # core beside ordinary processes on a shared machine (a cluster's own setting rules there).
        os.environ.setdefault("RAY_worker_niceness", "0")
    has_token = os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").exists()
    if spec.address and has_token:
        os.environ.setdefault("RAY_AUTH_MODE", "token")  # Ray 2.60 sends its token to a cluster only in token mode
    try:
        import ray
    except ImportError:
        raise SweepError(INSTALL_HINT) from None
    level = logging.INFO if spec.verbose else logging.CRITICAL  # a trial's failure shows on the board
    quiet = dict(log_to_driver=spec.verbose, logging_level=level, configure_logging=True)
    if spec.address:
        needs_token = _check_reachable(spec.address)
        try:
            ray.init(address=spec.address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            hint = "; it wants Ray's auth token: set RAY_AUTH_TOKEN or ~/.ray/auth_token" if needs_token else ""
            raise SweepError(f"--address {spec.address}: cannot join the Ray cluster "
                             f"({_first_line(exc)}){hint}") from None
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, **quiet)
    for name in ("ray", "ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(level)


def _first_line(exc: BaseException) -> str:
    """The error's own first line; a Ray task error names the trial's exception, not Ray's wrapper."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def write_sweep_file(spec: SweepSpec, planned: list[PlannedTrial]) -> None:
    """OUT/sweep.json: the grid and where its trial folders live (".": in OUT itself, so the sweep
    folder can be moved), for `sacae report`."""
    spec.out.mkdir(parents=True, exist_ok=True)
    document = {**{k: v for k, v in asdict(spec).items() if k not in ("out", "resume", "verbose")},
                "trials_root": "." if spec.root == spec.out.absolute() else str(spec.root),
                "trials": [p.trial.name for p in planned]}
    atomic_write_text(spec.out / SWEEP_FILE, json.dumps(document, indent=2, default=str) + "\n")


Listener = Callable[[str, str, dict[str, Any]], None]  # (trial name, event, last result)


def run_sweep(spec: SweepSpec, planned: list[PlannedTrial], listener: Listener) -> dict[str, str]:
    """Run the unfinished trials on Ray; returns {trial name: "done" | "failed: ..." | "stopped"}
    (stopped: interrupted; the trial's files say which finished).
    `listener(name, event, result)` is called on the driver for each Ray event (result, retry,
    done, failed)."""
    todo = [p for p in planned if not p.done]
    if not todo:
        write_sweep_file(spec, planned)
        return {}
    start_ray(spec)
    import ray
    from ray import tune

    have = ray.cluster_resources()
    for kind, need in (("CPU", spec.cpus_per_run), ("GPU", spec.gpus_per_run)):
        if need > have.get(kind, 0):  # Tune would wait for it forever
            ray.shutdown()
            raise SweepError(f"--{kind.lower()}s-per-run {need:g}: the Ray cluster has {have.get(kind, 0):g} {kind}s")
    write_sweep_file(spec, planned)  # only now: a sweep refused above leaves --out as it was

    class Relay(tune.Callback):  # type: ignore[misc]
        """Forwards Tune's trial events to the live board."""

        def __init__(self, listener: Listener) -> None:
            self.listener = listener

        def __getstate__(self) -> dict[str, Any]:
            return {}  # Tune pickles its run config for Tuner.restore; the board stays on the driver

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            self.listener(_name(trial), "result", result)

        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.listener(_name(trial), "retry", {})

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.listener(_name(trial), "done", trial.last_result or {})

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.listener(_name(trial), "failed", trial.last_result or {})

    common = {"root": str(spec.root), **spec.trial_args()}
    trainable = tune.with_resources(tune.with_parameters(run_trial, common=common),
                                    {"cpu": spec.cpus_per_run, "gpu": spec.gpus_per_run})
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search([asdict(p.trial) for p in todo])},
        tune_config=tune.TuneConfig(max_concurrent_trials=spec.max_concurrent,
                                    trial_name_creator=_tune_name, trial_dirname_creator=_tune_name),
        run_config=tune.RunConfig(
            name=f"tune_{time.strftime('%Y%m%d-%H%M%S')}", storage_path=str(spec.root / ".ray"),
            verbose=None if spec.verbose else 0,  # --verbose: Tune's own trial table too
            failure_config=tune.FailureConfig(max_failures=MAX_FAILURES), callbacks=[Relay(listener)],
            log_to_file=True),
    )
    try:
        grid = tuner.fit()  # returns early (trials stopped) on Ctrl-C: Tune handles SIGINT itself
    finally:
        ray.shutdown()
    errors = {Trial(**r.config["trial"]).name: _first_line(r.error) for r in grid if r.config and r.error is not None}
    for p in todo:
        if (p.folder / TRIAL_ERROR).is_file():
            errors[p.trial.name] = (p.folder / TRIAL_ERROR).read_text().strip()
    return {p.trial.name: "done" if checkpoint_step(p.folder) >= p.env_steps
            else f"failed: {errors[p.trial.name]}" if p.trial.name in errors else "stopped"
            for p in todo}


def _name(trial: Any) -> str:
    return Trial(**trial.config["trial"]).name


def _tune_name(trial: Any) -> str:
    return _name(trial).replace("/", "_")

