#!/usr/bin/env python3
"""A small Learning Hub instance agent, on stubs generated from proto/.

It connects over mutual TLS with the hub's CA, its instance certificate and
key, and sends its API key as ``authorization: Bearer <key>`` on every call.
Then it:

1. registers (region, context, capabilities) and applies the bootstrap
   configuration the hub answers with;
2. subscribes to insights in a background thread, resuming with
   ``after_sequence`` = the last sequence it received whenever the stream
   breaks (hub restart, network), with backoff;
3. runs ``--cycles`` learning cycles on a toy metric: ask for ranked
   strategies (GetStrategies), check the chosen one (CheckAction), apply it
   to the toy metric, share the outcome (ShareStrategy, with the metric's
   trajectory: the answer carries the fleet model's plateau prediction)
   and, when the metric was on a plateau, the plateau pattern
   (SharePattern);
   A cycle on which the plateau models (see 4) predict a plateau
   counts as one: the agent acts before it stalls;
4. trains the fleet's plateau model on its own trajectory (GetModel, a few
   epochs of gradient descent from the served weights, ShareModelUpdate with
   the change of the weights, never the values, and the served weights'
   log loss on the 30% of its examples it held out), then its context's own
   model the same way (``context_model``), which counts in its predictions
   by the share the hub serves (``context_share``), then asks the hub for a
   prediction of its trajectory (PredictPlateau) and checks that its own
   computation with the served weights and share agrees;
5. optionally waits until ``--wait-insights`` insights arrived, and prints a
   JSON summary as the last line on stdout (progress goes to stderr).

A replicated hub has several endpoints (``LEARNING_HUB_URL`` with
comma-separated URLs): the agent talks to one and, when a call fails with
UNAVAILABLE (that replica is down, cut off from its database, or has not
yet folded this agent's own writes), moves to the next and sends the call
again; its writes carry a ``request_id``, so a write sent twice counts once.
It sends the highest log position it was answered from (``x-hub-min-pos``),
so no replica answers it from state older than its own writes.

Settings come from flags or the same environment as the Rust client
(``learning_hub::client::ClientSettings::from_env``): ``LEARNING_HUB_URL``
(default https://localhost:3015), ``INSTANCE_ID``, ``LEARNING_HUB_CERTS_DIR``
(default ./certs, holding ca.pem, <INSTANCE_ID>.pem and <INSTANCE_ID>.key)
and ``HUB_API_KEY``.

Exit status: 0 when everything worked, 1 when a call failed or the insights
waited for did not arrive in time, 2 for bad settings.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gen_stubs  # noqa: E402  (next to this file)

try:
    import grpc
except ImportError as e:  # pragma: no cover - depends on the machine
    sys.exit(f"agent: grpcio is not installed ({e}); {gen_stubs.INSTALL_HINT}")

# ---------------------------------------------------------------------------
# The toy world: one metric the agent improves with strategies whose true
# effects it does not know (the hub's recommendations are what it learns
# from), and one more metric it tracks.
# ---------------------------------------------------------------------------

# strategy -> (mean gain at value 0.5, noise); gains shrink with headroom.
STRATEGIES = {
    "novelty_injection": (0.05, 0.02),
    "curriculum_shift": (0.035, 0.03),
    "replay": (0.02, 0.01),
    "consolidation": (0.008, 0.005),
    "speed_optimization": (-0.01, 0.03),
}
# A metric that gained less than this in the last cycle is on a plateau.
PLATEAU_GAIN = 0.01
OTHER_METRIC = ("retention", 0.7)
# Calls grpcio itself retries on UNAVAILABLE when the hub has one endpoint
# (reads and Register, which only refreshes a record). With several, the
# agent moves to another endpoint instead (see Hub), shares included: they
# carry request ids.
RETRYABLE = [
    "Register",
    "GetStrategies",
    "CheckAction",
    "GetPatterns",
    "GetInsights",
    "GetStatus",
    "Bootstrap",
    "SubscribeInsights",
    "GetModel",
    "PredictPlateau",
]
SERVICE_CONFIG = {
    "methodConfig": [
        {
            "name": [{"service": "learninghub.v1.Hub", "method": m} for m in RETRYABLE],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.1s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}
CALL_TIMEOUT = 10.0


# ---------------------------------------------------------------------------
# The plateau model's contract, as hub.proto states it (ShareModelUpdateRequest;
# learning_hub_proto::plateau in Rust): features of a metric's last values,
# the label, the logistic prediction and local training.
# ---------------------------------------------------------------------------

PLATEAU_MODEL = "plateau"
FEATURES = 7
WINDOW = 8
PROGRESS_EPSILON = 0.002
PATIENCE = 3
HORIZON = 2
DELTA_SCALE = 100.0


def plateau_features(values: list[float]) -> list[float] | None:
    if len(values) < 2:
        return None
    window = values[-WINDOW:]
    deltas = [b - a for a, b in zip(window, window[1:])]
    n = len(deltas)

    def mean(d):
        return sum(d) / len(d) if d else 0.0

    last3 = deltas[max(n - 3, 0):]
    before3 = deltas[max(n - 6, 0):max(n - 3, 0)]
    slowdown = mean(before3) - mean(last3) if before3 else 0.0
    stalled = 0
    for d in reversed(deltas):
        if d >= PROGRESS_EPSILON:
            break
        stalled += 1
    flat = sum(1 for d in deltas if d < PROGRESS_EPSILON)
    return [
        window[-1],
        deltas[-1] * DELTA_SCALE,
        mean(last3) * DELTA_SCALE,
        mean(deltas) * DELTA_SCALE,
        slowdown * DELTA_SCALE,
        stalled / (WINDOW - 1),
        flat / n,
    ]


def on_plateau(values: list[float]) -> bool | None:
    if len(values) <= PATIENCE:
        return None
    return values[-1] - values[-1 - PATIENCE] < PROGRESS_EPSILON * PATIENCE


def predict(weights: list[float], features: list[float]) -> float:
    z = weights[FEATURES] if len(weights) > FEATURES else 0.0
    for w, x in zip(weights, features):
        z += w * x
    return 1.0 / (1.0 + math.exp(-min(max(z, -40.0), 40.0)))


def predict_personal(fleet: list[float], context: list[float], share: float, features: list[float]) -> float:
    """The fleet model's probability mixed with the context model's by
    `share` (GetModelResponse.context_share), as PredictPlateau mixes them."""
    p = predict(fleet, features)
    if share <= 0.0:
        return p
    share = min(share, 1.0)
    return (1.0 - share) * p + share * predict(context, features)


def evaluate(weights: list[float], examples) -> dict:
    """How `weights` do on held-out examples: what ShareModelUpdate's
    `evaluation` reports, and what the hub sets a context model's share from."""
    correct, log_loss = 0, 0.0
    for features, ahead in examples:
        p = min(max(predict(weights, features), 1e-12), 1.0 - 1e-12)
        correct += int((p >= 0.5) == ahead)
        log_loss -= math.log(p) if ahead else math.log(1.0 - p)
    return {"examples": len(examples), "correct": correct, "log_loss": log_loss}


# Share of the examples held out of training to evaluate the served models
# on (as the simulator's instances do).
HELD_OUT_SHARE = 0.3


def plateau_examples(values: list[float]) -> list[tuple[list[float], bool]]:
    out = []
    for t in range(1, max(len(values) - HORIZON, 0)):
        seen = values[: t + 1]
        if on_plateau(seen) is True:
            continue
        features = plateau_features(seen)
        if features is None:
            continue
        ahead = any(on_plateau(values[: t + h + 1]) is True for h in range(1, HORIZON + 1))
        out.append((features, ahead))
    return out


def train(global_weights: list[float], examples, epochs=5, learning_rate=1.0, l2=0.001) -> list[float]:
    """Full-batch gradient descent on the log loss from the served weights;
    returns the change of the weights (what ShareModelUpdate sends)."""
    weights = list(global_weights)
    n = len(examples)
    for _ in range(epochs):
        gradient = [0.0] * (FEATURES + 1)
        for features, label in examples:
            error = predict(weights, features) - (1.0 if label else 0.0)
            for i, x in enumerate(features):
                gradient[i] += error * x
            gradient[FEATURES] += error
        for i in range(FEATURES + 1):
            weights[i] -= learning_rate * (gradient[i] / n + l2 * (weights[i] - global_weights[i]))
    return [w - g for w, g in zip(weights, global_weights)]


class ToyMetric:
    def __init__(self, name: str, value: float, rng: random.Random):
        self.name, self.value, self.rng = name, value, rng

    def apply(self, strategy: str) -> float:
        """Applies `strategy`; returns the change of the metric."""
        mean, noise = STRATEGIES[strategy]
        headroom = 2.0 * (1.0 - self.value)
        delta = (mean + self.rng.gauss(0.0, noise)) * headroom
        delta = round(max(-self.value, min(1.0 - self.value, delta)), 4)
        self.value = round(self.value + delta, 4)
        return delta


class AgentError(Exception):
    """A call or the connection failed (exit status 1)."""


class SettingsError(AgentError):
    """A setting is wrong: a file that cannot be read, a bad URL (exit status 2)."""


def log(message: str) -> None:
    print(f"[py-agent] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(
        description="A Learning Hub instance agent (Python, grpcio).",
        epilog="The API key is read from HUB_API_KEY (preferred: flags show up in process lists) or --api-key.",
    )
    p.add_argument(
        "--hub-url",
        default=env("LEARNING_HUB_URL", "https://localhost:3015"),
        help="env LEARNING_HUB_URL; a replicated hub's endpoints comma-separated",
    )
    p.add_argument("--instance-id", default=env("INSTANCE_ID"), help="env INSTANCE_ID (must match the certificate)")
    p.add_argument("--certs-dir", default=env("LEARNING_HUB_CERTS_DIR", "certs"), help="env LEARNING_HUB_CERTS_DIR")
    p.add_argument("--ca", help="CA certificate (default: CERTS_DIR/ca.pem)")
    p.add_argument("--cert", help="instance certificate (default: CERTS_DIR/<id>.pem)")
    p.add_argument("--key", help="instance private key (default: CERTS_DIR/<id>.key)")
    p.add_argument("--api-key", default=env("HUB_API_KEY"), help="env HUB_API_KEY")
    p.add_argument("--server-name", help="TLS name to verify (default: the URL's host)")
    p.add_argument("--region", default="dev")
    p.add_argument("--context", action="append", default=[], metavar="KEY=VALUE", help="context attribute (repeatable; default lang=python)")
    p.add_argument("--metric", default="learningVelocity", help="the toy metric to improve")
    p.add_argument("--start-value", type=float, default=0.55)
    p.add_argument("--cycles", type=int, default=5)
    p.add_argument("--interval", type=float, default=0.0, help="seconds between cycles (stands in for the bootstrap's cycle_interval_ms)")
    p.add_argument("--after-sequence", type=int, default=0, help="subscribe to insights after this sequence")
    p.add_argument("--wait-insights", type=int, default=0, metavar="N", help="after the cycles, wait until N insights arrived")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for --wait-insights")
    p.add_argument("--seed", type=int, help="seed of the toy metric's noise (default: from the instance id)")
    p.add_argument("--stubs", type=Path, default=gen_stubs.DEFAULT_OUT, help="where the generated stubs live")
    args = p.parse_args(argv)
    if not args.instance_id:
        p.error("no instance id: set INSTANCE_ID or pass --instance-id")
    if not args.api_key:
        p.error(f"no API key: set HUB_API_KEY (an operator prints one with `learning-hub admin keys issue {args.instance_id}`)")
    if args.cycles < 0 or args.wait_insights < 0:
        p.error("--cycles and --wait-insights must be >= 0")
    if not 0.0 <= args.start_value <= 1.0:
        p.error("--start-value must be within [0, 1]")
    context = {}
    for item in args.context or ["lang=python"]:
        key, sep, value = item.partition("=")
        if not sep or not key:
            p.error(f"--context {item!r}: expected KEY=VALUE")
        context[key] = value
    args.context = context
    certs = Path(args.certs_dir)
    args.ca = Path(args.ca or certs / "ca.pem")
    args.cert = Path(args.cert or certs / f"{args.instance_id}.pem")
    args.key = Path(args.key or certs / f"{args.instance_id}.key")
    if args.seed is None:
        args.seed = sum(args.instance_id.encode())
    return args


def target_of(url: str) -> tuple[str, str]:
    """`https://host:port` -> ("host:port", "host")."""
    parts = urlsplit(url if "://" in url else f"https://{url}")
    if parts.scheme != "https":
        raise SettingsError(f"hub URL {url!r}: the hub speaks only TLS, use https://")
    if not parts.hostname:
        raise SettingsError(f"hub URL {url!r} has no host")
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{parts.port or 3015}", host


def read_file(path: Path, what: str, hint: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise SettingsError(f"cannot read the {what} {path}: {e.strerror}; {hint}") from e


def hub_urls(args: argparse.Namespace) -> list[str]:
    urls = [u.strip() for u in args.hub_url.split(",") if u.strip()]
    if not urls:
        raise SettingsError(f"hub URL {args.hub_url!r} names no endpoint")
    return urls


def connect(args: argparse.Namespace, url: str, several: bool) -> grpc.Channel:
    target, _host = target_of(url)
    issue = f"issue one with `learning-hub certs issue {args.instance_id}`"
    ca = read_file(args.ca, "CA certificate", "it is the hub's certs/ca.pem")
    cert = read_file(args.cert, "instance certificate", issue)
    key = read_file(args.key, "instance key", issue)
    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert),
        # Sends `authorization: Bearer <key>` with every call.
        grpc.access_token_call_credentials(args.api_key),
    )
    options = [
        # One endpoint: grpcio retries reads there. Several: the agent moves
        # on at once instead (a retry against a replica that is down only
        # delays that).
        ("grpc.service_config", json.dumps(SERVICE_CONFIG if not several else {})),
        ("grpc.enable_retries", 0 if several else 1),
        # Reconnect quickly after a hub restart (the default starts at 1 s
        # and grows to 120 s).
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]
    if args.server_name:
        options.append(("grpc.ssl_target_name_override", args.server_name))
    return grpc.secure_channel(target, credentials, options=options)


def explain(method: str, error: grpc.RpcError, args: argparse.Namespace) -> str:
    code = error.code()
    message = f"{method} failed: {code.name}: {error.details()}"
    hints = {
        grpc.StatusCode.UNAUTHENTICATED: f"HUB_API_KEY must be the key issued for {args.instance_id} (`learning-hub admin keys issue {args.instance_id}`)",
        grpc.StatusCode.PERMISSION_DENIED: f"the instance id ({args.instance_id}) must be the one in the certificate {args.cert}",
        grpc.StatusCode.UNAVAILABLE: f"is the hub running at {args.hub_url}, and is {args.ca} its CA?",
    }
    return f"{message} ({hints[code]})" if code in hints else message


# ---------------------------------------------------------------------------
# The hub's endpoints
# ---------------------------------------------------------------------------


class Hub:
    """One stub per endpoint; calls go to the current one. On UNAVAILABLE
    the call moves to the next endpoint and is sent again (each endpoint
    tried twice at most). Answers carry the log position they were computed
    at (``x-hub-log-pos``); calls send the highest seen (``x-hub-min-pos``)."""

    def __init__(self, urls: list[str], stubs: list):
        self.urls, self.stubs = urls, stubs
        self.current = 0
        self.position = 0
        self.failovers = 0
        self._lock = threading.Lock()

    def metadata(self) -> list[tuple[str, str]]:
        return [("x-hub-min-pos", str(self.position))] if self.position else []

    def observe(self, call) -> None:
        for key, value in call.initial_metadata() or ():
            if key == "x-hub-log-pos" and value.isdigit():
                with self._lock:
                    self.position = max(self.position, int(value))

    def fail_over(self, index: int, error: grpc.RpcError) -> bool:
        """After `error` from endpoint `index`: moves to the next endpoint
        when there is one and the error says another might answer."""
        if len(self.stubs) < 2 or error.code() != grpc.StatusCode.UNAVAILABLE:
            return False
        with self._lock:
            if self.current == index:
                self.current = (index + 1) % len(self.stubs)
                self.failovers += 1
                log(f"{self.urls[index]}: {error.details()}; moving to {self.urls[self.current]}")
        return True

    def call(self, method: str, request):
        attempts = 2 * len(self.stubs)
        for attempt in range(attempts):
            index = self.current
            try:
                response, call = getattr(self.stubs[index], method).with_call(
                    request, timeout=CALL_TIMEOUT, metadata=self.metadata()
                )
                self.observe(call)
                return response
            except grpc.RpcError as e:
                if attempt == attempts - 1 or not self.fail_over(index, e):
                    raise
                time.sleep(0.05 * attempt)
        raise AssertionError("unreachable")

    def subscribe(self, request):
        """(endpoint index, the call) of SubscribeInsights on the current
        endpoint."""
        index = self.current
        return index, self.stubs[index].SubscribeInsights(request, metadata=self.metadata())


# ---------------------------------------------------------------------------
# The insight subscription
# ---------------------------------------------------------------------------


class InsightSubscriber(threading.Thread):
    """Reads SubscribeInsights in the background; when the stream breaks it
    subscribes again with after_sequence = the last sequence received — on
    the next endpoint, if there are several (replicas number insights
    alike) — so a hub restart costs neither an insight nor a duplicate."""

    PERMANENT = {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
    }

    def __init__(self, hub: Hub, pb, after_sequence: int):
        super().__init__(name="insights", daemon=True)
        self.hub, self.pb = hub, pb
        self.last = after_sequence
        self.sequences: list[int] = []
        self.titles: list[str] = []
        self.resumed_from: list[int] = []
        self.duplicates = 0
        self.error: str | None = None
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._call = None

    def run(self) -> None:
        backoff, first = 0.1, True
        while not self._stopping.is_set():
            if not first:
                self.resumed_from.append(self.last)
            first = False
            index, call = self.hub.subscribe(self.pb.SubscribeInsightsRequest(after_sequence=self.last))
            with self._changed:
                self._call = call
            if self._stopping.is_set():
                call.cancel()
                break
            try:
                for item in call:
                    insight = item.insight
                    if insight.sequence <= self.last:
                        self.duplicates += 1  # the hub promises none; counted, not delivered
                        continue
                    with self._changed:
                        self.last = insight.sequence
                        self.sequences.append(insight.sequence)
                        self.titles.append(insight.title)
                        self._changed.notify_all()
                    log(f"insight #{insight.sequence}: {insight.title}")
                    backoff = 0.1
                reason = "the stream ended"
            except grpc.RpcError as e:
                if self._stopping.is_set():
                    break
                if e.code() in self.PERMANENT:
                    with self._changed:
                        self.error = f"SubscribeInsights: {e.code().name}: {e.details()}"
                        self._changed.notify_all()
                    log(self.error)
                    return
                reason = f"{e.code().name}: {e.details()}"
                if self.hub.fail_over(index, e):
                    backoff = 0.1
            log(f"insight stream interrupted ({reason}); resuming after #{self.last} in {backoff:.1f}s")
            if self._stopping.wait(backoff * random.uniform(1.0, 1.2)):
                break
            backoff = min(backoff * 2, 5.0)

    def wait_for(self, count: int, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self.sequences) >= count or self.error is not None, timeout) and self.error is None

    def stop(self) -> None:
        self._stopping.set()
        with self._changed:
            if self._call is not None:
                self._call.cancel()


# ---------------------------------------------------------------------------
# The agent
# ---------------------------------------------------------------------------


def value_to_py(value):
    """google.protobuf.Value -> a Python value."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        n = value.number_value
        return int(n) if n.is_integer() else n
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "list_value":
        return [value_to_py(v) for v in value.list_value.values]
    if kind == "struct_value":
        return {k: value_to_py(v) for k, v in value.struct_value.fields.items()}
    return None


class Agent:
    def __init__(self, args, hub: Hub, pb):
        self.args, self.hub, self.pb = args, hub, pb
        self.metric = ToyMetric(args.metric, args.start_value, random.Random(args.seed))
        self.recent: list[tuple[str, str]] = []  # (strategy, metric), newest first
        # Agent configuration; the bootstrap overrides it.
        self.config = {"default_strategy": "replay", "prediction_confidence_threshold": 0.65, "max_cycles": 0}
        self.summary = {
            "agent": "python",
            "instance_id": args.instance_id,
            "registered": False,
            "cycles": 0,
            "outcomes_shared": 0,
            "patterns_shared": 0,
            "recommendations_received": 0,
            "recommendations_followed": 0,
            "action_warnings": 0,
            "plateaus_predicted": 0,
            "share_predictions": 0,
            "share_warnings": 0,
        }
        # The metric's value before each cycle and after the last.
        self.history: list[float] = []
        # The plateau model as last fetched.
        self.model_weights: list[float] = [0.0] * (FEATURES + 1)
        self.model_version = 0
        # The model of this agent's context, and its share in predictions.
        self.context_weights: list[float] = [0.0] * (FEATURES + 1)
        self.context_share = 0.0

    def call(self, method: str, request):
        try:
            return self.hub.call(method, request)
        except grpc.RpcError as e:
            raise AgentError(explain(method, e, self.args)) from e

    def register(self) -> None:
        pb = self.pb
        response = self.call(
            "Register",
            pb.RegisterRequest(
                instance_id=self.args.instance_id,
                region=self.args.region,
                context=self.args.context,
                capabilities=[f"strategy:{s}" for s in STRATEGIES],
            ),
        )
        self.summary["registered"] = True
        self.summary["newly_registered"] = response.newly_registered
        bootstrap = response.bootstrap
        parameters = {k: value_to_py(v) for k, v in bootstrap.parameters.items()}
        applied = {}
        for key in ("default_strategy", "prediction_confidence_threshold", "max_cycles"):
            if key in parameters:
                self.config[key] = applied[key] = parameters[key]
        source = pb.ConfigSource.Name(bootstrap.source)
        log(
            f"registered {self.args.instance_id} in {self.args.region} ({'new' if response.newly_registered else 'refreshed'}); "
            f"bootstrap from {source}: applied {json.dumps(applied)}; cycle_interval_ms={parameters.get('cycle_interval_ms')} "
            f"(a toy cycle waits --interval={self.args.interval}s instead)"
        )
        self.summary["bootstrap"] = {
            "source": source,
            "parameters": parameters,
            "applied": applied,
            "proven_strategies": [r.strategy for r in bootstrap.proven_strategies],
        }

    def recent_pb(self):
        return [
            self.pb.RecentApplication(strategy=s, metric=m, cycles_ago=i + 1)
            for i, (s, m) in enumerate(self.recent[:8])
        ]

    def metrics_pb(self, value: float, stuck: bool):
        name, other = OTHER_METRIC
        return {
            self.metric.name: self.pb.MetricState(value=value, stuck=stuck),
            name: self.pb.MetricState(value=other, stuck=False),
        }

    def choose(self, recommendations, cycle: int) -> tuple[str, str]:
        threshold = float(self.config["prediction_confidence_threshold"])
        for r in recommendations:
            if r.strategy in STRATEGIES and r.confidence >= threshold:
                self.summary["recommendations_followed"] += 1
                return r.strategy, f"hub recommends it (confidence {r.confidence:.2f})"
        # No confident recommendation this agent can apply: explore, starting
        # with the bootstrap's default strategy.
        names = list(STRATEGIES)
        start = names.index(self.config["default_strategy"]) if self.config["default_strategy"] in names else 0
        return names[(start + cycle) % len(names)], "exploring"

    def cycle(self, cycle: int, last_delta: float | None) -> float:
        pb, metric = self.pb, self.metric
        before = metric.value
        self.history.append(before)
        stuck = last_delta is None or last_delta < PLATEAU_GAIN
        features = plateau_features(self.history)
        if not stuck and self.model_version > 0 and features is not None:
            # The fleet's model sees a plateau coming: act as on one.
            if predict_personal(self.model_weights, self.context_weights, self.context_share, features) >= 0.5:
                stuck = True
                self.summary["plateaus_predicted"] += 1
        ranked = self.call(
            "GetStrategies",
            pb.GetStrategiesRequest(
                metric=metric.name, current_value=before, context=self.args.context, limit=5, recent=self.recent_pb()
            ),
        ).recommendations
        self.summary["recommendations_received"] += len(ranked)
        strategy, why = self.choose(ranked, cycle)
        check = self.call(
            "CheckAction",
            pb.CheckActionRequest(
                strategy=strategy,
                metric=metric.name,
                metrics=self.metrics_pb(before, stuck),
                recent=self.recent_pb(),
                context=self.args.context,
            ),
        )
        if not check.safe:
            self.summary["action_warnings"] += len(check.warnings)
            if check.safer_alternative in STRATEGIES:
                warning = check.warnings[0].message if check.warnings else "not safe"
                why = f"CheckAction warned ({warning}); safer: {check.safer_alternative}"
                strategy = check.safer_alternative
        delta = metric.apply(strategy)
        successful = delta > 0
        if stuck:
            self.call(
                "SharePattern",
                pb.SharePatternRequest(
                    metrics=self.metrics_pb(before, True),
                    cycles_until_plateau=cycle,
                    recovery_strategies=[strategy] if successful else [],
                    environment=self.args.context,
                    target_metric=metric.name,
                    # One id per logical write: sent again (another
                    # replica, a retry), it counts once.
                    request_id=str(uuid.uuid4()),
                ),
            )
            self.summary["patterns_shared"] += 1
        shared = self.call(
            "ShareStrategy",
            pb.ShareStrategyRequest(
                strategy=strategy,
                metric=metric.name,
                value_before=before,
                successful=successful,
                delta=delta,
                condition="on plateau" if stuck else "",
                context=self.args.context,
                recent=self.recent_pb(),
                request_id=str(uuid.uuid4()),
                # The metric's recent values, ending after this application:
                # the answer carries the fleet model's plateau prediction.
                trajectory=(self.history + [metric.value])[-32:],
            ),
        )
        self.summary["outcomes_shared"] += 1
        if shared.HasField("plateau"):
            self.summary["share_predictions"] += 1
            self.summary["share_warnings"] += int(shared.plateau.warning)
        self.recent.insert(0, (strategy, metric.name))
        log(
            f"cycle {cycle + 1}: {metric.name} {before:.3f}{' (plateau)' if stuck else ''}; "
            f"{len(ranked)} recommendation(s); applied {strategy} ({why}): {delta:+.4f}; "
            f"outcome #{shared.outcome_sequence} shared"
        )
        return delta

    def run_cycles(self) -> None:
        cycles = self.args.cycles
        if self.config["max_cycles"]:
            cycles = min(cycles, int(self.config["max_cycles"]))
        self.summary["metric"] = {"name": self.metric.name, "start": self.metric.value}
        last_delta = None
        for cycle in range(cycles):
            if cycle and self.args.interval:
                time.sleep(self.args.interval)
            last_delta = self.cycle(cycle, last_delta)
            self.summary["cycles"] += 1
        self.summary["metric"]["end"] = self.metric.value
        self.history.append(self.metric.value)

    def fetch_model(self):
        model = self.call("GetModel", self.pb.GetModelRequest(model=PLATEAU_MODEL, known_version=self.model_version))
        if not model.unchanged:
            self.model_weights = list(model.weights)
            self.model_version = model.version
        return model

    def fetch_context_model(self):
        model = self.call("GetModel", self.pb.GetModelRequest(model=PLATEAU_MODEL, context_model=True))
        self.context_weights = list(model.weights)
        self.context_share = model.context_share
        return model

    def update_request(self, weights: list[float], version: int, train_on, held_out, context_model: bool):
        """A ShareModelUpdate trained from `weights` (version `version`), with
        the served weights evaluated on the held-out examples."""
        pb = self.pb
        request = pb.ShareModelUpdateRequest(
            model=PLATEAU_MODEL,
            base_version=version,
            delta=train(weights, train_on),
            examples=len(train_on),
            request_id=str(uuid.uuid4()),
            context_model=context_model,
        )
        if held_out:
            request.evaluation.CopyFrom(pb.ModelEvaluation(**evaluate(weights, held_out)))
        return request

    def share_model(self) -> None:
        """Trains the plateau model, and the model of this agent's context,
        on its trajectory (holding some examples out to evaluate the served
        versions on) and sends the changes of the weights; then compares the
        hub's prediction for the trajectory with its own."""
        pb = self.pb
        self.fetch_model()
        examples = plateau_examples(self.history)
        cut = len(examples) - int(len(examples) * HELD_OUT_SHARE)
        train_on, held_out = examples[:cut], examples[cut:]
        report = {"base_version": self.model_version, "examples": len(examples)}
        if train_on:
            answer = self.call(
                "ShareModelUpdate",
                self.update_request(self.model_weights, self.model_version, train_on, held_out, False),
            )
            report.update(update_sent=True, pending=answer.pending, new_version=answer.new_version)
            # The context's own model: only this context's instances move it,
            # and it counts in predictions as far as their evaluations show
            # it predicts them better than the fleet's (context_share).
            context = self.fetch_context_model()
            answer = self.call(
                "ShareModelUpdate",
                self.update_request(self.context_weights, context.version, train_on, held_out, True),
            )
            report["context_model"] = {
                "context": context.context,
                "base_version": context.version,
                "update_sent": True,
                "pending": answer.pending,
                "new_version": answer.new_version,
            }
        trajectory = self.history[-32:]
        # Another instance may make a new version between the fetch and the
        # prediction: compare only answers from the same versions.
        for _ in range(3):
            self.fetch_model()
            context = self.fetch_context_model()
            predicted = self.call(
                "PredictPlateau",
                pb.PredictPlateauRequest(
                    metrics=[pb.MetricTrajectory(metric=self.metric.name, values=trajectory)],
                    context=self.args.context,
                ),
            )
            if (
                predicted.model_version == self.model_version
                # The hub names the context model's version only when it
                # mixed it in (a share above 0).
                and predicted.context_model_version == (context.version if self.context_share > 0 else 0)
                and predicted.context_share == self.context_share
            ):
                hub_p = predicted.predictions[0].probability
                own_p = predict_personal(
                    self.model_weights, self.context_weights, self.context_share, plateau_features(trajectory)
                )
                report.update(
                    version=self.model_version,
                    hub_probability=hub_p,
                    own_probability=own_p,
                    context_share=self.context_share,
                    warning=predicted.predictions[0].warning,
                )
                break
        log(f"plateau model: {json.dumps(report)}")
        self.summary["model"] = report


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    stubs = gen_stubs.ensure_stubs(args.stubs.resolve())
    try:
        from learninghub.v1 import hub_pb2 as pb  # generated
        from learninghub.v1 import hub_pb2_grpc
    except Exception as e:  # e.g. a protobuf runtime older than the generated code
        sys.exit(f"agent: cannot import the stubs generated in {stubs}: {e}; {gen_stubs.INSTALL_HINT}")

    error = None
    status = 1
    subscriber = None
    agent = None
    channels = []
    hub = None
    try:
        urls = hub_urls(args)
        channels = [connect(args, url, len(urls) > 1) for url in urls]
        hub = Hub(urls, [hub_pb2_grpc.HubStub(c) for c in channels])
        agent = Agent(args, hub, pb)
        agent.register()
        subscriber = InsightSubscriber(hub, pb, args.after_sequence)
        subscriber.start()
        agent.run_cycles()
        agent.share_model()
        if args.wait_insights and not subscriber.wait_for(args.wait_insights, args.timeout):
            error = subscriber.error or (
                f"received {len(subscriber.sequences)} of {args.wait_insights} insights within {args.timeout:.0f}s"
            )
    except AgentError as e:
        error = str(e)
        status = 2 if isinstance(e, SettingsError) else 1
    except KeyboardInterrupt:
        error = "interrupted"
    finally:
        if subscriber is not None:
            subscriber.stop()
            subscriber.join(timeout=5)
        for channel in channels:
            channel.close()

    summary = agent.summary if agent else {"agent": "python", "registered": False}
    if subscriber is not None:
        error = error or subscriber.error
        summary.update(
            insights_received=len(subscriber.sequences),
            insight_sequences=subscriber.sequences,
            insight_titles=subscriber.titles,
            duplicates_dropped=subscriber.duplicates,
            resumes=len(subscriber.resumed_from),
            resumed_from=subscriber.resumed_from,
        )
    if hub is not None:
        summary.update(failovers=hub.failovers, log_position=hub.position)
    summary["error"] = error
    summary["ok"] = error is None
    if error:
        log(f"error: {error}")
    print(json.dumps(summary), flush=True)
    return 0 if error is None else status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
