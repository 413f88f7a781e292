#!/usr/bin/env python3
"""Side-by-side load benchmark: Learning Hub against OSS Vizier and Optuna.

What one "pair" is, for each peer (the unit this benchmark counts):

* ``hub``         -- ``learninghub.v1.Hub/ShareStrategy`` (report one strategy
                     outcome) then ``Hub/GetStrategies`` (ask for ranked
                     recommendations), over mutual TLS with an API key.
* ``vizier``      -- OSS Vizier ``SuggestTrials`` (one trial, RANDOM_SEARCH;
                     the returned long-running operation is polled with
                     ``GetOperation`` if it is not already done) then
                     ``CompleteTrial`` with a final measurement.
* ``optuna``      -- Optuna ``study.ask()`` then ``study.tell()`` through the
                     ``GrpcStorageProxy`` client, RandomSampler.
* ``optuna-tpe``  -- the same with Optuna's default TPESampler (an extra row).

For every cell of the matrix (peer x preloaded history x client count) the
driver starts a fresh server pinned to one CPU (``taskset -c 0``) on a copy of
a preloaded data directory, starts N client processes pinned to the other CPU
(so the GIL of one Python process is never the limit and client work does not
steal the server's core), lets every client warm up, then runs all clients in
a closed loop for a fixed window and counts the pairs that completed inside
it. Persistence is on everywhere: sqlite files for Vizier and Optuna, the
hub's sled store (acknowledged writes are durable) for the hub.

Subcommands:

* ``run``           -- the whole matrix (or any subset), table + JSON lines.
* ``gen-stubs``     -- generate the hub's Python stubs into a directory, for
                       trying the API by hand.
* ``serve-vizier``  -- internal: the Vizier server process.
* ``serve-optuna``  -- internal: the Optuna gRPC proxy server process.

Everything temporary (data directories, the copied hub binary, certificates,
generated stubs, server logs) lives in one temp directory that is removed at
the end unless ``--keep-temp`` is given.
"""

from __future__ import annotations

import argparse
import array
import datetime
import json
import math
import multiprocessing as mp
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PROTO_ROOT = REPO / "proto"
HUB_PROTO = "learninghub/v1/hub.proto"

# Readiness line each server prints on stdout. The hub's is its own
# documented line; the two Python servers print ours.
HUB_READY = "learning-hub listening on"
PY_READY = "PEERS-READY"

# Every number a client sends is drawn from these fixed vocabularies, so the
# hub's aggregates look like a small real fleet's (5 metrics x 10 strategies x
# a handful of contexts) rather than one ever-growing key or random noise.
METRICS = [
    "learningVelocity",
    "transferEfficiency",
    "retention",
    "generalization",
    "sampleEfficiency",
]
STRATEGIES = [
    "novelty_injection",
    "consolidation",
    "curriculum_shift",
    "speed_optimization",
    "regularization",
    "replay",
    "exploration_boost",
    "lr_warm_restart",
    "distillation",
    "pruning",
]
CONTEXTS = [
    {"provider": "claude", "training_latency": "low"},
    {"provider": "claude", "training_latency": "high"},
    {"provider": "gpt", "training_latency": "low"},
    {"provider": "gemini", "training_latency": "high"},
]

# Identities used to preload the hub: outcomes of a fleet come from many
# instances, and several connections let the preload keep the hub busy.
HUB_PRELOAD_INSTANCES = 8
# Outstanding preload calls per peer (futures, from one process).
PRELOAD_IN_FLIGHT = 32


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def log(msg: str) -> None:
    """Progress on stderr, so stdout stays the table."""
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A currently free loopback port (the tiny reuse race is acceptable for
    a benchmark that runs one server at a time)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pin_to_cpu(cpu: int | None) -> None:
    """Pins the calling process (and so its future children) to one CPU:
    the same system call `taskset -c` makes."""
    if cpu is None:
        return
    os.sched_setaffinity(0, {cpu})


def percentile(sorted_xs: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (no interpolation, so
    p99 is a latency some pair actually had)."""
    if not sorted_xs:
        return None
    rank = max(1, math.ceil(p / 100.0 * len(sorted_xs)))
    return sorted_xs[rank - 1]


def pkg_version(name: str) -> str:
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return "not installed"


def tail(path: Path, n: int = 30) -> str:
    """Last lines of a server log, for error messages."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


# Hidden "truth" of the simulated fleet: each (strategy, metric) pair has a
# success probability and a mean gain. Derived from a fixed seed so every run
# and every client process agrees on it without sharing state.
_TRUTH_RNG = random.Random(20240601)
TRUTH = {
    (s, m): (_TRUTH_RNG.uniform(0.2, 0.85), _TRUTH_RNG.uniform(0.01, 0.12))
    for s in STRATEGIES
    for m in METRICS
}


def fake_outcome(rng: random.Random) -> dict:
    """One plausible strategy outcome: fields of ShareStrategyRequest."""
    strategy = rng.choice(STRATEGIES)
    metric = rng.choice(METRICS)
    p_success, gain = TRUTH[(strategy, metric)]
    value_before = rng.uniform(0.05, 0.95)
    # Strategies work worse near the ceiling: gives the hub's value bands
    # something to find.
    if value_before > 0.85:
        p_success *= 0.5
    successful = rng.random() < p_success
    if successful:
        delta = min(abs(rng.gauss(gain, gain / 3)), 1.0 - value_before)
    else:
        delta = -min(abs(rng.gauss(0.03, 0.015)), value_before)
    out = {
        "strategy": strategy,
        "metric": metric,
        "value_before": value_before,
        "successful": successful,
        "delta": max(-1.0, min(1.0, delta)),
    }
    if value_before > 0.85:
        out["condition"] = "metric already > 0.85"
    return out


# Search space shared by Vizier and Optuna (same shape, so neither gets an
# easier problem), and a cheap synthetic objective over it.
def objective(lr: float, dropout: float, layers: int, optimizer: str) -> float:
    bonus = {"adam": 0.1, "rmsprop": 0.05, "sgd": 0.0}[optimizer]
    return (
        1.0
        - (math.log10(lr) + 3.0) ** 2 / 10.0
        - (dropout - 0.2) ** 2
        - abs(layers - 4) / 20.0
        + bonus
    )


def random_params(rng: random.Random) -> dict:
    return {
        "learning_rate": 10 ** rng.uniform(-5, -1),
        "dropout": rng.uniform(0.0, 0.5),
        "layers": rng.randint(1, 8),
        "optimizer": rng.choice(["adam", "sgd", "rmsprop"]),
    }


# ---------------------------------------------------------------------------
# Server processes
# ---------------------------------------------------------------------------


class ServerProcess:
    """One peer server, started under `taskset -c CPU` in its own session.

    Readiness is a line on the server's stdout (redirected to a file, which
    is simpler and more robust than reading a pipe while the server runs).
    Stopping sends SIGTERM to the server's own process group (its id is the
    server's pid because of start_new_session), then SIGKILL if it lingers:
    only processes this driver started are ever signalled.
    """

    def __init__(self, name: str, argv: list[str], workdir: Path, ready_marker: str,
                 cpu: int | None, env: dict | None = None):
        self.name = name
        self.workdir = workdir
        self.ready_marker = ready_marker
        self.stdout_path = workdir / f"{name}.stdout.log"
        self.stderr_path = workdir / f"{name}.stderr.log"
        full = (["taskset", "-c", str(cpu)] if cpu is not None else []) + argv
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
            cwd=workdir,
            env=env,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float) -> str:
        """Returns the readiness line; raises with the log tail if the server
        exits or stays silent."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.stdout_path.read_text(errors="replace")
            for line in text.splitlines():
                if self.ready_marker in line:
                    return line
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} before it was ready:\n"
                    f"{tail(self.stderr_path)}"
                )
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s:\n{tail(self.stderr_path)}")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} died with {self.proc.returncode}:\n{tail(self.stderr_path)}"
            )

    def stop(self, grace: float = 15.0) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        else:
            # The leader is gone; make sure nothing it spawned survives.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._out.close()
        self._err.close()


def serve_vizier_main(args: argparse.Namespace) -> None:
    """Internal entry: OSS Vizier's own server class, sqlite file database.

    DefaultVizierServer runs the Vizier service and Pythia (the policy
    runner, where RANDOM_SEARCH executes) in one process, on a 30-thread
    grpc server. Its import pulls in jax/flax even for random search, hence
    a slow start (outside every measurement)."""
    from vizier.service import servers

    server = servers.DefaultVizierServer(
        host="127.0.0.1", port=args.port, database_url=f"sqlite:///{args.db}"
    )
    print(f"{PY_READY} {server.endpoint}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    # Let in-flight calls finish so the sqlite file is left quiescent.
    server._server.stop(grace=5).wait()  # noqa: SLF001 - the class exposes no stop()


def serve_optuna_main(args: argparse.Namespace) -> None:
    """Internal entry: Optuna's gRPC storage proxy over an RDBStorage on a
    sqlite file, wrapped by `get_storage` as its documentation recommends
    (the in-process cache it adds is part of how the proxy is meant to run)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.get_storage(
        optuna.storages.RDBStorage(f"sqlite:///{args.db}")
    )

    # run_grpc_proxy_server blocks without announcing readiness on stdout, so
    # a helper thread announces it once the port accepts connections.
    def announce() -> None:
        while True:
            try:
                socket.create_connection(("127.0.0.1", args.port), timeout=1).close()
                print(f"{PY_READY} 127.0.0.1:{args.port}", flush=True)
                return
            except OSError:
                time.sleep(0.05)

    threading.Thread(target=announce, daemon=True).start()
    optuna.storages.run_grpc_proxy_server(storage, host="127.0.0.1", port=args.port)


# ---------------------------------------------------------------------------
# Peers: set-up in the driver, and the client side run in worker processes
# ---------------------------------------------------------------------------


@dataclass
class Run:
    """What every peer needs to know about this run."""

    tmp: Path
    server_cpu: int | None
    client_cpu: int | None
    python: str
    hub_bin: Path | None = None
    stub_dir: Path | None = None
    hub_certs: Path | None = None
    hub_version: str = ""


class Peer:
    """A peer's life cycle in the driver.

    `prepare(preload)` builds a template data directory holding exactly
    `preload` completed outcomes/trials (through the peer's own API), then
    stops its server. Every cell then starts a server on a *copy* of that
    template, so each cell begins at the same history and the (slow) preload
    happens once per history size rather than once per cell.
    """

    name = ""

    def __init__(self, run: Run, max_clients: int):
        self.run = run
        self.max_clients = max_clients

    def version(self) -> str:
        raise NotImplementedError

    def prepare(self, preload: int) -> Path:
        raise NotImplementedError

    def start(self, datadir: Path, label: str) -> tuple[ServerProcess, dict]:
        """Starts a server on `datadir`; returns it and the client spec."""
        raise NotImplementedError

    def client_spec(self, base: dict, idx: int) -> dict:
        """Per-client arguments (picklable) for the worker process."""
        return dict(base, idx=idx)


class VizierPeer(Peer):
    name = "vizier"
    OWNER = "bench"

    def version(self) -> str:
        return f"google-vizier {pkg_version('google-vizier')}"

    def _start_server(self, datadir: Path, label: str) -> tuple[ServerProcess, int]:
        port = free_port()
        srv = ServerProcess(
            label,
            [self.run.python, str(HERE / "peers.py"), "serve-vizier",
             "--port", str(port), "--db", str(datadir / "vizier.sqlite")],
            datadir, PY_READY, self.run.server_cpu,
        )
        srv.wait_ready(timeout=180)
        return srv, port

    def prepare(self, preload: int) -> Path:
        import grpc
        from vizier._src.service import study_pb2, vizier_service_pb2, vizier_service_pb2_grpc
        from vizier.service import pyvizier as vz

        datadir = self.run.tmp / f"template-vizier-{preload}"
        datadir.mkdir()
        srv, port = self._start_server(datadir, "vizier-prepare")
        try:
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            stub = vizier_service_pb2_grpc.VizierServiceStub(channel)
            config = vz.StudyConfig(algorithm="RANDOM_SEARCH")
            root = config.search_space.root
            root.add_float_param("learning_rate", 1e-5, 1e-1, scale_type=vz.ScaleType.LOG)
            root.add_float_param("dropout", 0.0, 0.5)
            root.add_int_param("layers", 1, 8)
            root.add_categorical_param("optimizer", ["adam", "sgd", "rmsprop"])
            config.metric_information.append(
                vz.MetricInformation(name="objective", goal=vz.ObjectiveMetricGoal.MAXIMIZE)
            )
            study = stub.CreateStudy(
                vizier_service_pb2.CreateStudyRequest(
                    parent=f"owners/{self.OWNER}",
                    study=study_pb2.Study(display_name="bench", study_spec=config.to_proto()),
                )
            )
            # Preload: completed trials added with CreateTrial (state
            # SUCCEEDED + final measurement), the service's own way to add
            # trials evaluated elsewhere. Going through suggest+complete would
            # take ~10 minutes for 10k at Vizier's pace and store the same rows
            # (plus suggestion operations of clients that no longer exist).
            rng = random.Random(1)

            def request(_i: int):
                p = random_params(rng)
                trial = vz.Trial(parameters=p)
                trial.complete(vz.Measurement(metrics={"objective": objective(
                    p["learning_rate"], p["dropout"], p["layers"], p["optimizer"])}))
                return vizier_service_pb2.CreateTrialRequest(
                    parent=study.name, trial=vz.TrialConverter.to_proto(trial)
                )

            run_futures(stub.CreateTrial, request, preload)
            listed = stub.ListTrials(vizier_service_pb2.ListTrialsRequest(parent=study.name))
            if len(listed.trials) != preload:
                raise RuntimeError(f"vizier preload: {len(listed.trials)} trials stored, wanted {preload}")
            channel.close()
            (datadir / "study_name").write_text(study.name)
        finally:
            srv.stop()
        return datadir

    def start(self, datadir: Path, label: str) -> tuple[ServerProcess, dict]:
        srv, port = self._start_server(datadir, label)
        return srv, {
            "peer": "vizier",
            "target": f"127.0.0.1:{port}",
            "study": (datadir / "study_name").read_text(),
        }


class OptunaPeer(Peer):
    name = "optuna"
    STUDY = "bench"

    def __init__(self, run: Run, max_clients: int, sampler: str = "random"):
        super().__init__(run, max_clients)
        self.sampler = sampler
        self.name = "optuna" if sampler == "random" else f"optuna-{sampler}"

    def version(self) -> str:
        return f"optuna {pkg_version('optuna')}"

    def _start_server(self, datadir: Path, label: str) -> tuple[ServerProcess, int]:
        port = free_port()
        srv = ServerProcess(
            label,
            [self.run.python, str(HERE / "peers.py"), "serve-optuna",
             "--port", str(port), "--db", str(datadir / "optuna.sqlite")],
            datadir, PY_READY, self.run.server_cpu,
        )
        srv.wait_ready(timeout=120)
        return srv, port

    def prepare(self, preload: int) -> Path:
        import warnings

        import optuna

        warnings.simplefilter("ignore")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # Both Optuna rows (random and TPE) share one template per history.
        datadir = self.run.tmp / f"template-optuna-{preload}"
        if datadir.exists():
            return datadir
        datadir.mkdir()
        srv, port = self._start_server(datadir, "optuna-prepare")
        try:
            proxy = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=port)
            proxy.wait_server_ready(timeout=60)
            study = optuna.create_study(storage=proxy, study_name=self.STUDY, direction="maximize")
            # Preload: finished trials through the proxy with add_trials (the
            # public API for trials evaluated elsewhere), one RPC each.
            rng = random.Random(1)
            dists = optuna_distributions()
            batch = []
            for i in range(preload):
                p = random_params(rng)
                batch.append(optuna.trial.create_trial(
                    params=p, distributions=dists,
                    value=objective(p["learning_rate"], p["dropout"], p["layers"], p["optimizer"]),
                ))
                if len(batch) == 500 or i == preload - 1:
                    study.add_trials(batch)
                    batch = []
            n = len(study.get_trials(deepcopy=False))
            if n != preload:
                raise RuntimeError(f"optuna preload: {n} trials stored, wanted {preload}")
            proxy.close()
        finally:
            srv.stop()
        return datadir

    def start(self, datadir: Path, label: str) -> tuple[ServerProcess, dict]:
        srv, port = self._start_server(datadir, label)
        return srv, {"peer": "optuna", "port": port, "study": self.STUDY, "sampler": self.sampler}


def optuna_distributions():
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    return {
        "learning_rate": FloatDistribution(1e-5, 1e-1, log=True),
        "dropout": FloatDistribution(0.0, 0.5),
        "layers": IntDistribution(1, 8),
        "optimizer": CategoricalDistribution(["adam", "sgd", "rmsprop"]),
    }


class HubPeer(Peer):
    name = "hub"

    def version(self) -> str:
        # Taken when the binary was copied (Run.hub_version): the work tree
        # may move on while the matrix runs.
        return self.run.hub_version

    def _ids(self) -> list[str]:
        return ([f"bench-{i}" for i in range(self.max_clients)]
                + [f"preload-{i}" for i in range(HUB_PRELOAD_INSTANCES)])

    def _start_server(self, datadir: Path, label: str) -> tuple[ServerProcess, int]:
        port = free_port()
        srv = ServerProcess(
            label,
            [str(self.run.hub_bin), "serve", "--listen", f"127.0.0.1:{port}",
             "--data-dir", str(datadir / "data"), "--certs-dir", str(self.run.hub_certs),
             # Unlimited: the default 1000 requests/hour/instance would be the
             # benchmark's ceiling. No background insight runs mid-window.
             "--rate-limit-per-hour", "0", "--insight-interval-minutes", "0",
             "--metrics-listen", "off"],
            datadir, HUB_READY, self.run.server_cpu,
        )
        srv.wait_ready(timeout=60)
        return srv, port

    def _cli(self, *args: str) -> str:
        res = subprocess.run([str(self.run.hub_bin), *args], capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise RuntimeError(f"learning-hub {' '.join(args)} failed: {res.stderr.strip()}")
        return res.stdout.strip()

    def prepare(self, preload: int) -> Path:
        import grpc

        datadir = self.run.tmp / f"template-hub-{preload}"
        datadir.mkdir()
        first = not (self.run.hub_certs / "ca.pem").exists()
        srv, port = self._start_server(datadir, "hub-prepare")
        try:
            if first:
                # The server generated the dev PKI on its first start; issue
                # one instance certificate per client and preload identity.
                for ident in self._ids():
                    self._cli("certs", "issue", ident, "--certs-dir", str(self.run.hub_certs))
            # API keys live in the store, so each template gets its own; a
            # newly issued key replaces the old one, and each cell's copy of
            # this template carries exactly these.
            hub_url = f"https://127.0.0.1:{port}"
            keys = {
                ident: self._cli("admin", "keys", "issue", ident, "--hub", hub_url,
                                 "--certs-dir", str(self.run.hub_certs))
                for ident in self._ids()
            }
            (datadir / "keys.json").write_text(json.dumps(keys))
            hub_pb2, hub_pb2_grpc = import_hub_stubs(str(self.run.stub_dir))
            # Preload through ShareStrategy from several registered instances,
            # keeping PRELOAD_IN_FLIGHT calls outstanding in total.
            stubs = []
            for i in range(HUB_PRELOAD_INSTANCES):
                ident = f"preload-{i}"
                spec = self._base_spec(port, keys)
                channel = hub_channel(spec, ident, grpc)
                stub = hub_pb2_grpc.HubStub(channel)
                md = (("authorization", f"Bearer {keys[ident]}"),)
                ctx = CONTEXTS[i % len(CONTEXTS)]
                stub.Register(hub_pb2.RegisterRequest(
                    instance_id=ident, region="bench", context=ctx), metadata=md, timeout=30)
                stubs.append((channel, stub, md, ctx))
            rng = random.Random(1)

            def call(i: int):
                _channel, stub, md, ctx = stubs[i % len(stubs)]
                req = hub_pb2.ShareStrategyRequest(context=ctx, **fake_outcome(rng))
                return stub.ShareStrategy.future(req, metadata=md, timeout=60)

            run_futures(None, call, preload)
            status = stubs[0][1].GetStatus(hub_pb2.GetStatusRequest(), metadata=stubs[0][2], timeout=30)
            if status.strategy_outcomes != preload:
                raise RuntimeError(f"hub preload: {status.strategy_outcomes} outcomes stored, wanted {preload}")
            for channel, *_ in stubs:
                channel.close()
        finally:
            srv.stop()
        return datadir

    def _base_spec(self, port: int, keys: dict) -> dict:
        c = self.run.hub_certs
        return {
            "peer": "hub",
            "target": f"127.0.0.1:{port}",
            "ca": str(c / "ca.pem"),
            "certs_dir": str(c),
            "keys": keys,
            "stub_dir": str(self.run.stub_dir),
        }

    def start(self, datadir: Path, label: str) -> tuple[ServerProcess, dict]:
        srv, port = self._start_server(datadir, label)
        keys = json.loads((datadir / "keys.json").read_text())
        return srv, self._base_spec(port, keys)


def hub_version(binary: Path, original: Path) -> str:
    """`learning-hub --version`, the repository's commit (marked +dirty when
    src/, Cargo.toml or proto/ had uncommitted changes) and the binary's
    build time. Best effort: the binary was built from the work tree as it
    was at build time, which another engineer may be editing."""
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout.strip()
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--",
                            "src", "Cargo.toml", "Cargo.lock", "proto"],
                           capture_output=True, text=True).stdout.strip()
    built = datetime.datetime.fromtimestamp(original.stat().st_mtime, datetime.timezone.utc)
    return f"{out} (git {rev}{'+dirty' if dirty else ''}, built {built:%Y-%m-%dT%H:%M:%SZ})"


def run_futures(method, make, count: int) -> None:
    """Issues `count` unary calls with up to PRELOAD_IN_FLIGHT outstanding.

    `make(i)` returns either a request (then `method.future(request)` is
    called) or, when `method` is None, an already started future."""
    pending = []
    for i in range(count):
        fut = method.future(make(i), timeout=60) if method is not None else make(i)
        pending.append(fut)
        if len(pending) >= PRELOAD_IN_FLIGHT:
            pending.pop(0).result()
        if (i + 1) % 2000 == 0:
            log(f"  preloaded {i + 1}/{count}")
    for fut in pending:
        fut.result()


def import_hub_stubs(stub_dir: str):
    if stub_dir not in sys.path:
        sys.path.insert(0, stub_dir)
    from learninghub.v1 import hub_pb2, hub_pb2_grpc  # noqa: PLC0415 - generated at run time

    return hub_pb2, hub_pb2_grpc


def hub_channel(spec: dict, ident: str, grpc):
    """A mutual-TLS channel presenting `ident`'s certificate."""
    certs = Path(spec["certs_dir"])
    creds = grpc.ssl_channel_credentials(
        root_certificates=Path(spec["ca"]).read_bytes(),
        private_key=(certs / f"{ident}.key").read_bytes(),
        certificate_chain=(certs / f"{ident}.pem").read_bytes(),
    )
    return grpc.secure_channel(spec["target"], creds)


def generate_hub_stubs(out_dir: Path) -> None:
    """Generates learninghub/v1/hub_pb2{,_grpc}.py with grpcio-tools' protoc
    (the well-known types come from grpc_tools' bundled includes)."""
    import grpc_tools
    from grpc_tools import protoc

    includes = Path(grpc_tools.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    rc = protoc.main([
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{includes}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(PROTO_ROOT / HUB_PROTO),
    ])
    if rc != 0:
        raise RuntimeError(f"protoc failed ({rc}) on {PROTO_ROOT / HUB_PROTO}")


# --- client side (runs inside worker processes) -----------------------------


class HubClient:
    def __init__(self, spec: dict):
        import grpc

        self.pb, pb_grpc = import_hub_stubs(spec["stub_dir"])
        ident = f"bench-{spec['idx']}"
        self.channel = hub_channel(spec, ident, grpc)
        self.stub = pb_grpc.HubStub(self.channel)
        self.md = (("authorization", f"Bearer {spec['keys'][ident]}"),)
        self.ctx = CONTEXTS[spec["idx"] % len(CONTEXTS)]
        self.rng = random.Random(1000 + spec["idx"])
        self.stub.Register(self.pb.RegisterRequest(
            instance_id=ident, region="bench", context=self.ctx), metadata=self.md, timeout=30)

    def pair(self) -> None:
        outcome = fake_outcome(self.rng)
        self.stub.ShareStrategy(
            self.pb.ShareStrategyRequest(context=self.ctx, **outcome), metadata=self.md, timeout=30)
        current = min(1.0, max(0.0, outcome["value_before"] + outcome["delta"]))
        # One recommendation, as Vizier suggests one trial and Optuna asks
        # for one: the hub's default of 10 would make the client decode ten.
        self.stub.GetStrategies(
            self.pb.GetStrategiesRequest(
                metric=outcome["metric"], current_value=current, context=self.ctx, limit=1),
            metadata=self.md, timeout=30)

    def close(self) -> None:
        self.channel.close()


class VizierClient:
    """Raw grpcio calls on Vizier's generated stub: the same requests its
    Python client sends, without that client's conversions and sleeps."""

    def __init__(self, spec: dict):
        import grpc
        from google.longrunning import operations_pb2
        from vizier._src.service import study_pb2, vizier_service_pb2, vizier_service_pb2_grpc

        self.ops = operations_pb2
        self.study_pb2 = study_pb2
        self.vs = vizier_service_pb2
        self.channel = grpc.insecure_channel(spec["target"])
        self.stub = vizier_service_pb2_grpc.VizierServiceStub(self.channel)
        self.study = spec["study"]
        # One client id per process: Vizier hands a client back its own
        # still-ACTIVE trials, so clients must not share an id.
        self.client_id = f"bench-{spec['idx']}"

    def pair(self) -> None:
        op = self.stub.SuggestTrials(self.vs.SuggestTrialsRequest(
            parent=self.study, suggestion_count=1, client_id=self.client_id), timeout=60)
        # OSS Vizier computes suggestions inside SuggestTrials and normally
        # returns an operation that is already done; poll only if it is not
        # (short sleeps, unlike the stock client's 0.3 s minimum).
        delay = 0.005
        while not op.done:
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
            op = self.stub.GetOperation(self.ops.GetOperationRequest(name=op.name), timeout=60)
        if op.HasField("error"):
            raise RuntimeError(f"suggest operation failed: {op.error}")
        trials = self.vs.SuggestTrialsResponse.FromString(op.response.value).trials
        if not trials:
            raise RuntimeError("suggest returned no trial")
        trial = trials[0]
        p = {}
        for param in trial.parameters:
            v = param.value
            p[param.parameter_id] = v.string_value if v.WhichOneof("kind") == "string_value" else v.number_value
        value = objective(p["learning_rate"], p["dropout"], int(p["layers"]), p["optimizer"])
        m = self.study_pb2.Measurement(metrics=[self.study_pb2.Measurement.Metric(metric_id="objective", value=value)])
        self.stub.CompleteTrial(self.vs.CompleteTrialRequest(name=trial.name, final_measurement=m), timeout=60)

    def close(self) -> None:
        self.channel.close()


class OptunaClient:
    """Optuna's own client: sampling runs here, in the client process (that
    is Optuna's design); the proxy only stores and serves trials."""

    def __init__(self, spec: dict):
        import warnings

        import optuna

        warnings.simplefilter("ignore")  # ExperimentalWarning for the proxy
        # Optuna logs every finished trial at INFO; that would cost the client.
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.proxy = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=spec["port"])
        seed = 1000 + spec["idx"]
        sampler = (optuna.samplers.RandomSampler(seed=seed) if spec["sampler"] == "random"
                   else optuna.samplers.TPESampler(seed=seed))
        self.study = optuna.load_study(study_name=spec["study"], storage=self.proxy, sampler=sampler)
        self.dists = optuna_distributions()

    def pair(self) -> None:
        trial = self.study.ask(self.dists)
        p = trial.params
        self.study.tell(trial, objective(p["learning_rate"], p["dropout"], p["layers"], p["optimizer"]))

    def close(self) -> None:
        self.proxy.close()


CLIENTS = {"hub": HubClient, "vizier": VizierClient, "optuna": OptunaClient}


def client_worker(spec: dict, ready_q, go, t0, result_q) -> None:
    """One load-generating client process.

    Connects and warms up (TLS handshakes, first-call costs, Optuna's trial
    cache download), reports ready, waits for the common start time, then
    runs pairs back to back until the window closes. Only pairs that both
    start and end inside the window count; failed pairs count as errors."""
    idx = spec["idx"]
    try:
        pin_to_cpu(spec["client_cpu"])
        client = CLIENTS[spec["peer"]](spec)
        for _ in range(spec["warmup_pairs"]):
            client.pair()
    except BaseException:  # noqa: BLE001 - report anything to the driver
        ready_q.put((idx, traceback.format_exc()))
        return
    ready_q.put((idx, None))
    go.wait()
    start = t0.value
    deadline = start + spec["window"]
    now = time.monotonic()
    if now < start:
        time.sleep(start - now)
    latencies = array.array("d")
    errors = 0
    first_error = None
    while True:
        s = time.monotonic()
        if s >= deadline:
            break
        try:
            client.pair()
            ok = True
        except Exception as e:  # noqa: BLE001 - counted, the window goes on
            ok = False
            if first_error is None:
                first_error = f"{type(e).__name__}: {str(e)[:500]}"
        e_ = time.monotonic()
        if e_ <= deadline:
            if ok:
                latencies.append(e_ - s)
            else:
                errors += 1
        if not ok:
            time.sleep(0.01)  # don't spin on a failing server
    result_q.put((idx, latencies.tobytes(), errors, first_error))
    try:
        client.close()
    except Exception:  # noqa: BLE001
        pass


# ---------------------------------------------------------------------------
# The matrix
# ---------------------------------------------------------------------------


def run_cell(peer: Peer, template: Path, preload: int, clients: int, args: argparse.Namespace) -> dict:
    """One cell: fresh server on a copy of the template, N clients, one window."""
    label = f"{peer.name}-{preload}-{clients}"
    datadir = peer.run.tmp / f"cell-{label}"
    shutil.copytree(template, datadir, ignore=shutil.ignore_patterns("*.log"))
    srv, base = peer.start(datadir, f"{peer.name}-server")
    ctx = mp.get_context("spawn")  # no fork after grpc has run in the driver
    ready_q, result_q = ctx.Queue(), ctx.Queue()
    go = ctx.Event()
    t0 = ctx.Value("d", 0.0)
    procs = []
    finished = False
    try:
        for i in range(clients):
            spec = peer.client_spec(base, i)
            spec.update(window=args.window, warmup_pairs=args.warmup_pairs, client_cpu=args.client_cpu,
                        sampler=getattr(peer, "sampler", None))
            p = ctx.Process(target=client_worker, args=(spec, ready_q, go, t0, result_q), daemon=True)
            p.start()
            procs.append(p)
        for _ in range(clients):
            idx, err = ready_q.get(timeout=args.setup_timeout)
            if err:
                raise RuntimeError(f"client {idx} failed to start:\n{err}")
        wait_for_quiet(args.busy_threshold, args.quiet_max_wait)
        srv.check_alive()
        start = time.monotonic() + 0.2
        t0.value = start
        go.set()
        # CPU accounting over the window: the server's, the clients', and
        # everything else on the machine (another workload would skew the
        # figures; the matrix reruns such a cell).
        client_pids = [p.pid for p in procs]
        time.sleep(max(0.0, start - time.monotonic()))
        before = cpu_snapshot(srv.proc.pid, client_pids)
        time.sleep(max(0.0, start + args.window - time.monotonic()))
        after = cpu_snapshot(srv.proc.pid, client_pids)
        results = [result_q.get(timeout=args.window + 180) for _ in range(clients)]
        finished = True
        srv.check_alive()
    finally:
        for p in procs:
            # After a failure the other clients may be blocked waiting for
            # the start signal: end them at once rather than wait.
            if finished:
                p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        srv.stop()
        if not args.keep_temp:
            shutil.rmtree(datadir, ignore_errors=True)
    lat: list[float] = []
    errors = 0
    first_errors = []
    for _idx, raw, errs, first in results:
        a = array.array("d")
        a.frombytes(raw)
        lat.extend(a)
        errors += errs
        if first:
            first_errors.append(first)
    lat.sort()
    pairs = len(lat)
    row = {
        "peer": peer.name,
        "preload": preload,
        "clients": clients,
        "pairs_per_s": round(pairs / args.window, 2),
        "p50_ms": round(percentile(lat, 50) * 1000, 3) if lat else None,
        "p99_ms": round(percentile(lat, 99) * 1000, 3) if lat else None,
        "pairs": pairs,
        "errors": errors,
        "window_s": args.window,
        "peer_version": peer.version(),
    }
    row.update(cpu_usage(before, after))
    if first_errors:
        row["first_error"] = first_errors[0]
    return row


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the command name: state is field 3, utime 14 and stime 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_snapshot(server_pid: int, client_pids: list[int]) -> dict:
    # /proc/stat "cpu": user nice system idle iowait irq softirq steal ...
    # Process time (user + nice + system) is what other workloads show up in;
    # irq + softirq is mostly the loopback traffic of the benchmark itself,
    # which the kernel does not charge to any process, so it is kept apart.
    vals = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return {
        "t": time.monotonic(),
        "busy": (vals[0] + vals[1] + vals[2]) / CLK_TCK,
        "irq": (vals[5] + vals[6]) / CLK_TCK,
        "server": proc_cpu_s(server_pid),
        "clients": sum(proc_cpu_s(p) for p in client_pids),
        "driver": proc_cpu_s(os.getpid()),
    }


def cpu_usage(before: dict, after: dict) -> dict:
    """Percent of one core used over the window (100 = one core busy)."""
    dt = after["t"] - before["t"]
    d = {k: after[k] - before[k] for k in ("busy", "irq", "server", "clients", "driver")}
    other = max(0.0, d["busy"] - d["server"] - d["clients"] - d["driver"])
    return {
        "server_cpu_pct": round(100 * d["server"] / dt, 1),
        "clients_cpu_pct": round(100 * d["clients"] / dt, 1),
        "irq_cpu_pct": round(100 * d["irq"] / dt, 1),
        "other_cpu_pct": round(100 * other / dt, 1),
    }


def machine_busy_pct(seconds: float = 2.0) -> float:
    """Process CPU use of the whole machine over a short interval, in percent
    of one core (called while none of our servers or clients run)."""
    def busy() -> float:
        vals = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return (vals[0] + vals[1] + vals[2]) / CLK_TCK

    b0, t0 = busy(), time.monotonic()
    time.sleep(seconds)
    return 100 * (busy() - b0) / (time.monotonic() - t0)


def wait_for_quiet(threshold: float, max_wait: float) -> None:
    """Waits (up to max_wait seconds) until the machine is idle enough to
    measure: on a shared machine a compile or another benchmark on either
    core would be measured as the peer's slowness. Called with the server
    up and the clients warmed up but idle, right before the window, so a
    quiet gap is used at once."""
    start = time.monotonic()
    last_log = 0.0
    while True:
        pct = machine_busy_pct()
        if pct <= threshold:
            return
        waited = time.monotonic() - start
        if waited >= max_wait:
            log(f"machine still busy ({pct:.0f}% of a core) after {max_wait:.0f} s; measuring anyway")
            return
        if waited - last_log >= 60 or last_log == 0.0:
            log(f"machine busy ({pct:.0f}% of a core used by other processes); waiting")
            last_log = max(waited, 1e-9)


def fmt(v, digits=1) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def markdown_table(rows: list[dict]) -> str:
    # The CPU column (percent of one core: server / clients / other
    # processes) shows which side was the limit and whether anything else
    # disturbed the window.
    out = ["| peer | preload | clients | pairs/s | p50 ms | p99 ms | pairs | errors | CPU % srv / cli / other |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "failed" in r:
            out.append(f"| {r['peer']} | {r['preload']} | {r['clients']} | failed: {r['failed'][:80]} | | | | | |")
            continue
        out.append(
            f"| {r['peer']} | {r['preload']} | {r['clients']} | {fmt(r['pairs_per_s'])} | "
            f"{fmt(r['p50_ms'], 2)} | {fmt(r['p99_ms'], 2)} | {r['pairs']} | {r['errors']} | "
            f"{r['server_cpu_pct']:.0f} / {r['clients_cpu_pct']:.0f} / {r['other_cpu_pct']:.0f} |"
        )
    return "\n".join(out)


def ratio_table(rows: list[dict]) -> str:
    """Hub throughput as a multiple of each peer's, cell by cell."""
    by = {(r["peer"], r["preload"], r["clients"]): r for r in rows if "failed" not in r}
    others = [p for p in ("vizier", "optuna", "optuna-tpe") if any(k[0] == p for k in by)]
    if not any(k[0] == "hub" for k in by) or not others:
        return ""
    out = ["| preload | clients | " + " | ".join(f"hub ÷ {p}" for p in others) + " |",
           "|---:|---:|" + "---:|" * len(others)]
    for (peer, preload, clients), r in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        if peer != "hub":
            continue
        cells = []
        for p in others:
            o = by.get((p, preload, clients))
            cells.append(f"{r['pairs_per_s'] / o['pairs_per_s']:,.0f}×" if o and o["pairs_per_s"] else "—")
        out.append(f"| {preload} | {clients} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def parse_ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def run_plan(plan, client_counts: list[int], args: argparse.Namespace, rows: list[dict], out_file) -> None:
    """Every cell of the plan, in order; a failed preload or cell is recorded
    and the matrix goes on with the next."""
    for peer, peer_preloads in plan:
        log(f"{peer.name}: {peer.version()}")
        for preload in peer_preloads:
            try:
                t = time.monotonic()
                template = peer.prepare(preload)
                log(f"{peer.name}: template with {preload} preloaded ready in {time.monotonic() - t:.1f} s")
            except Exception as e:  # noqa: BLE001 - record and go on with other peers
                log(f"{peer.name} preload {preload} FAILED: {e}")
                for c in client_counts:
                    rows.append({"peer": peer.name, "preload": preload, "clients": c, "failed": str(e)})
                continue
            for c in client_counts:
                for attempt in range(args.busy_retries + 1):
                    try:
                        row = run_cell(peer, template, preload, c, args)
                    except Exception as e:  # noqa: BLE001
                        log(f"{peer.name} preload={preload} clients={c} FAILED: {e}")
                        row = {"peer": peer.name, "preload": preload, "clients": c, "failed": str(e)}
                        break
                    row["attempt"] = attempt + 1
                    if row["other_cpu_pct"] <= args.busy_threshold or attempt == args.busy_retries:
                        break
                    # Something else used the machine during the window:
                    # the figures are not this peer's. Wait and redo.
                    log(f"{peer.name} preload={preload} clients={c}: other processes used "
                        f"{row['other_cpu_pct']}% CPU during the window; retrying in {args.busy_wait:.0f} s")
                    time.sleep(args.busy_wait)
                rows.append(row)
                if "failed" not in row:
                    log(f"{peer.name} preload={preload} clients={c}: {row['pairs_per_s']} pairs/s, "
                        f"p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, errors {row['errors']}; CPU% "
                        f"server {row['server_cpu_pct']} clients {row['clients_cpu_pct']} "
                        f"irq {row['irq_cpu_pct']} other {row['other_cpu_pct']}"
                        + (f" (first: {row['first_error']})" if row.get("first_error") else ""))
                if out_file:
                    out_file.write(json.dumps(row) + "\n")
                    out_file.flush()


def run_main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    peers_wanted = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = set(peers_wanted) - {"hub", "vizier", "optuna"}
    if unknown:
        raise SystemExit(f"unknown peer(s): {', '.join(sorted(unknown))}")
    preloads = parse_ints(args.preloads)
    client_counts = parse_ints(args.clients)
    tpe_preloads = parse_ints(args.optuna_tpe_preloads) if "optuna" in peers_wanted else []

    allowed = os.sched_getaffinity(0)
    for cpu in (args.server_cpu, args.client_cpu):
        if cpu is not None and cpu not in allowed:
            raise SystemExit(f"CPU {cpu} is not available to this process (allowed: {sorted(allowed)})")
    # The driver itself lives on the client CPU, so its children (clients)
    # inherit that and nothing of ours competes with the server's core.
    pin_to_cpu(args.client_cpu)

    tmp = Path(tempfile.mkdtemp(prefix="lh-peers-"))
    run = Run(tmp=tmp, server_cpu=args.server_cpu, client_cpu=args.client_cpu, python=sys.executable)
    out_file = open(args.out, "a") if args.out else None
    rows: list[dict] = []
    interrupted = False
    try:
        if "hub" in peers_wanted:
            src = Path(args.hub_bin).resolve()
            if not src.exists():
                raise SystemExit(f"hub binary {src} not found: build it with `cargo build --release`")
            # A private copy: another build may replace target/release while
            # the matrix runs.
            run.hub_bin = tmp / "learning-hub"
            shutil.copy2(src, run.hub_bin)
            run.hub_version = hub_version(run.hub_bin, src)
            run.hub_certs = tmp / "hub-certs"
            run.hub_certs.mkdir()
            run.stub_dir = tmp / "stubs"
            generate_hub_stubs(run.stub_dir)
            import_hub_stubs(str(run.stub_dir))  # fail early if they do not import

        max_clients = max(client_counts)
        plan: list[tuple[Peer, list[int]]] = []
        for name in peers_wanted:
            peer = {"hub": HubPeer, "vizier": VizierPeer, "optuna": OptunaPeer}[name](run, max_clients)
            plan.append((peer, preloads))
            if name == "optuna" and tpe_preloads:
                plan.append((OptunaPeer(run, max_clients, sampler="tpe"), tpe_preloads))

        log(f"temp dir {tmp}; server CPU {args.server_cpu}, client CPU {args.client_cpu}; "
            f"window {args.window} s")
        run_plan(plan, client_counts, args, rows, out_file)
    except KeyboardInterrupt:
        # Interrupted (Ctrl-C, SIGTERM): still show what was measured.
        interrupted = True
        log("interrupted; partial results follow")
    finally:
        if out_file:
            out_file.close()
        if args.keep_temp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    elapsed = time.monotonic() - started
    print(markdown_table(rows))
    ratios = ratio_table(rows)
    if ratios:
        print()
        print(ratios)
    print()
    print(f"window {args.window} s per cell; server on CPU {args.server_cpu}, clients on CPU "
          f"{args.client_cpu}; {platform.python_implementation()} {platform.python_version()}, "
          f"grpcio {pkg_version('grpcio')}, protobuf {pkg_version('protobuf')}; "
          f"total {elapsed / 60:.1f} min")
    if interrupted:
        return 130
    return 1 if any("failed" in r for r in rows) else 0


def _raise_interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run the benchmark matrix")
    r.add_argument("--peers", default="hub,vizier,optuna", help="comma-separated: hub,vizier,optuna")
    r.add_argument("--preloads", default="0,1000,10000", help="histories to preload (comma-separated)")
    r.add_argument("--clients", default="1,4,16", help="client process counts (comma-separated)")
    r.add_argument("--optuna-tpe-preloads", default="10000",
                   help="histories for the extra Optuna TPE row ('' to skip)")
    r.add_argument("--window", type=float, default=20.0, help="measured seconds per cell")
    r.add_argument("--warmup-pairs", type=int, default=2, help="unmeasured pairs per client first")
    r.add_argument("--setup-timeout", type=float, default=600.0,
                   help="seconds for all clients to connect and warm up")
    r.add_argument("--hub-bin", default=str(REPO / "target" / "release" / "learning-hub"))
    r.add_argument("--server-cpu", type=int, default=0)
    r.add_argument("--client-cpu", type=int, default=1)
    r.add_argument("--busy-threshold", type=float, default=10.0,
                   help="rerun a cell when other processes used more than this %% of a core during it")
    r.add_argument("--busy-retries", type=int, default=3, help="reruns of a cell on a busy machine")
    r.add_argument("--busy-wait", type=float, default=5.0, help="seconds to wait before such a rerun")
    r.add_argument("--quiet-max-wait", type=float, default=600.0,
                   help="before each window, wait at most this long for other processes to go idle")
    r.add_argument("--out", help="append one JSON object per cell to this file")
    r.add_argument("--keep-temp", action="store_true", help="keep data dirs and server logs")

    g = sub.add_parser("gen-stubs", help="generate the hub's Python stubs into a directory")
    g.add_argument("out")

    for name in ("serve-vizier", "serve-optuna"):
        s = sub.add_parser(name, help=argparse.SUPPRESS)
        s.add_argument("--port", type=int, required=True)
        s.add_argument("--db", required=True)

    args = ap.parse_args()
    if args.cmd == "run":
        # SIGTERM (e.g. from a CI timeout) unwinds like Ctrl-C, so the
        # finally blocks stop servers and remove the temp dir.
        signal.signal(signal.SIGTERM, _raise_interrupt)
        return run_main(args)
    if args.cmd == "gen-stubs":
        generate_hub_stubs(Path(args.out))
        return 0
    if args.cmd == "serve-vizier":
        serve_vizier_main(args)
        return 0
    if args.cmd == "serve-optuna":
        serve_optuna_main(args)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
