#!/usr/bin/env node
// A small Learning Hub instance agent in Node, on @grpc/grpc-js with the
// stubs @grpc/proto-loader builds from proto/learninghub/v1/hub.proto at
// start.
//
// It connects over mutual TLS with the hub's CA, its instance certificate
// and key, and sends its API key as `authorization: Bearer <key>` on every
// call. Then it:
//
// 1. registers (region, context, capabilities) and applies the bootstrap
//    configuration the hub answers with;
// 2. subscribes to insights, resuming with after_sequence = the last
//    sequence it received whenever the stream breaks (hub restart, network),
//    with backoff;
// 3. runs --cycles learning cycles on a toy metric: ask for ranked strategies
//    (GetStrategies), check the chosen one (CheckAction), apply it to the toy
//    metric, share the outcome (ShareStrategy, with the metric's trajectory:
//    the answer carries the fleet model's plateau prediction) and, when the
//    metric was on a plateau, the plateau pattern (SharePattern);
//    A cycle on which the plateau models (see 4) predict a plateau counts
//    as one: the agent acts before it stalls;
// 4. trains the fleet's plateau model on its own trajectory (GetModel, a few
//    epochs of gradient descent from the served weights, ShareModelUpdate
//    with the change of the weights, never the values, and the served
//    weights' log loss on the 30% of its examples it held out), then its
//    context's own model the same way (context_model), which counts in its
//    predictions by the share the hub serves (context_share), then asks the
//    hub for a prediction of its trajectory (PredictPlateau) and checks that
//    its own computation with the served weights and share agrees;
// 5. optionally waits until --wait-insights insights arrived, and prints a
//    JSON summary as the last line on stdout (progress goes to stderr).
//
// A replicated hub has several endpoints (LEARNING_HUB_URL with
// comma-separated URLs): the agent talks to one and, when a call fails with
// UNAVAILABLE (that replica is down, cut off from its database, or has not
// yet folded this agent's own writes), moves to the next and sends the call
// again; its writes carry a request_id, so a write sent twice counts once.
// It sends the highest log position it was answered from (x-hub-min-pos),
// so no replica answers it from state older than its own writes.
//
// Settings come from flags or the same environment as the Rust client:
// LEARNING_HUB_URL (default https://localhost:3015), INSTANCE_ID,
// LEARNING_HUB_CERTS_DIR (default ./certs, holding ca.pem, <INSTANCE_ID>.pem
// and <INSTANCE_ID>.key) and HUB_API_KEY.
//
// Exit status: 0 when everything worked, 1 when a call failed or the insights
// waited for did not arrive in time, 2 for bad settings.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');

const INSTALL_HINT = 'install them with: (cd examples/node && npm ci)';
let grpc;
let protoLoader;
try {
  grpc = require('@grpc/grpc-js');
  protoLoader = require('@grpc/proto-loader');
} catch (e) {
  console.error(`agent: @grpc/grpc-js or @grpc/proto-loader is missing (${e.message.split('\n')[0]}); ${INSTALL_HINT}`);
  process.exit(2);
}

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');
const PROTO = 'learninghub/v1/hub.proto';

// ---------------------------------------------------------------------------
// The toy world: one metric the agent improves with strategies whose true
// effects it does not know, and one more metric it tracks.
// ---------------------------------------------------------------------------

// strategy -> [mean gain at value 0.5, noise]; gains shrink with headroom.
const STRATEGIES = {
  novelty_injection: [0.05, 0.02],
  curriculum_shift: [0.035, 0.03],
  replay: [0.02, 0.01],
  consolidation: [0.008, 0.005],
  speed_optimization: [-0.01, 0.03],
};
// A metric that gained less than this in the last cycle is on a plateau.
const PLATEAU_GAIN = 0.01;
const OTHER_METRIC = ['retention', 0.7];
// Calls grpc-js itself retries on UNAVAILABLE when the hub has one endpoint
// (reads and Register, which only refreshes a record). With several, the
// agent moves to another endpoint instead (see Hub), shares included: they
// carry request ids.
const RETRYABLE = [
  'Register',
  'GetStrategies',
  'CheckAction',
  'GetPatterns',
  'GetInsights',
  'GetStatus',
  'Bootstrap',
  'SubscribeInsights',
  'GetModel',
  'PredictPlateau',
];
const SERVICE_CONFIG = {
  methodConfig: [
    {
      name: RETRYABLE.map((method) => ({ service: 'learninghub.v1.Hub', method })),
      retryPolicy: {
        maxAttempts: 5,
        initialBackoff: '0.1s',
        maxBackoff: '2s',
        backoffMultiplier: 2,
        retryableStatusCodes: ['UNAVAILABLE'],
      },
    },
  ],
};
const CALL_TIMEOUT_MS = 10_000;

// A small seeded generator (mulberry32) with a Gaussian draw, so a run is
// repeatable for its --seed.
function rngFrom(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    gauss(mean, sd) {
      const u = 1 - next();
      const v = next();
      return mean + sd * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
    },
  };
}

const round4 = (x) => Math.round(x * 1e4) / 1e4;

// ---------------------------------------------------------------------------
// The plateau model's contract, as hub.proto states it (ShareModelUpdateRequest;
// learning_hub_proto::plateau in Rust): features of a metric's last values, the
// label, the logistic prediction and local training.
// ---------------------------------------------------------------------------

const PLATEAU_MODEL = 'plateau';
const FEATURES = 7;
const WINDOW = 8;
const PROGRESS_EPSILON = 0.002;
const PATIENCE = 3;
const HORIZON = 2;
const DELTA_SCALE = 100.0;

function plateauFeatures(values) {
  if (values.length < 2) return null;
  const window = values.slice(-WINDOW);
  const deltas = window.slice(1).map((v, i) => v - window[i]);
  const n = deltas.length;
  const mean = (d) => (d.length ? d.reduce((a, b) => a + b, 0) / d.length : 0.0);
  const last3 = deltas.slice(Math.max(n - 3, 0));
  const before3 = deltas.slice(Math.max(n - 6, 0), Math.max(n - 3, 0));
  const slowdown = before3.length ? mean(before3) - mean(last3) : 0.0;
  let stalled = 0;
  for (let i = n - 1; i >= 0 && deltas[i] < PROGRESS_EPSILON; i -= 1) stalled += 1;
  const flat = deltas.filter((d) => d < PROGRESS_EPSILON).length;
  return [
    window[window.length - 1],
    deltas[n - 1] * DELTA_SCALE,
    mean(last3) * DELTA_SCALE,
    mean(deltas) * DELTA_SCALE,
    slowdown * DELTA_SCALE,
    stalled / (WINDOW - 1),
    flat / n,
  ];
}

function onPlateau(values) {
  if (values.length <= PATIENCE) return null;
  return values[values.length - 1] - values[values.length - 1 - PATIENCE] < PROGRESS_EPSILON * PATIENCE;
}

function predict(weights, features) {
  let z = weights.length > FEATURES ? weights[FEATURES] : 0.0;
  features.forEach((x, i) => {
    z += (weights[i] || 0.0) * x;
  });
  return 1.0 / (1.0 + Math.exp(-Math.min(Math.max(z, -40.0), 40.0)));
}

// The fleet model's probability mixed with the context model's by `share`
// (GetModelResponse.context_share), as PredictPlateau mixes them.
function predictPersonal(fleet, context, share, features) {
  const p = predict(fleet, features);
  if (share <= 0.0) return p;
  const s = Math.min(share, 1.0);
  return (1.0 - s) * p + s * predict(context, features);
}

// How `weights` do on held-out examples: what ShareModelUpdate's
// `evaluation` reports, and what the hub sets a context model's share from.
function evaluate(weights, examples) {
  let correct = 0;
  let logLoss = 0.0;
  for (const [features, ahead] of examples) {
    const p = Math.min(Math.max(predict(weights, features), 1e-12), 1.0 - 1e-12);
    if ((p >= 0.5) === ahead) correct += 1;
    logLoss -= ahead ? Math.log(p) : Math.log(1.0 - p);
  }
  return { examples: String(examples.length), correct: String(correct), log_loss: logLoss };
}

// Share of the examples held out of training to evaluate the served models
// on (as the simulator's instances do).
const HELD_OUT_SHARE = 0.3;

function plateauExamples(values) {
  const out = [];
  for (let t = 1; t < values.length - HORIZON; t += 1) {
    const seen = values.slice(0, t + 1);
    if (onPlateau(seen) === true) continue;
    const features = plateauFeatures(seen);
    if (!features) continue;
    let ahead = false;
    for (let h = 1; h <= HORIZON; h += 1) ahead = ahead || onPlateau(values.slice(0, t + h + 1)) === true;
    out.push([features, ahead]);
  }
  return out;
}

// Full-batch gradient descent on the log loss from the served weights;
// returns the change of the weights (what ShareModelUpdate sends).
function train(globalWeights, examples, { epochs = 5, learningRate = 1.0, l2 = 0.001 } = {}) {
  const weights = globalWeights.slice();
  const n = examples.length;
  for (let epoch = 0; epoch < epochs; epoch += 1) {
    const gradient = new Array(FEATURES + 1).fill(0.0);
    for (const [features, label] of examples) {
      const error = predict(weights, features) - (label ? 1.0 : 0.0);
      features.forEach((x, i) => {
        gradient[i] += error * x;
      });
      gradient[FEATURES] += error;
    }
    for (let i = 0; i <= FEATURES; i += 1) {
      weights[i] -= learningRate * (gradient[i] / n + l2 * (weights[i] - globalWeights[i]));
    }
  }
  return weights.map((w, i) => w - globalWeights[i]);
}

class ToyMetric {
  constructor(name, value, rng) {
    Object.assign(this, { name, value, rng });
  }

  // Applies `strategy`; returns the change of the metric.
  apply(strategy) {
    const [mean, noise] = STRATEGIES[strategy];
    const headroom = 2 * (1 - this.value);
    let delta = this.rng.gauss(mean, noise) * headroom;
    delta = round4(Math.max(-this.value, Math.min(1 - this.value, delta)));
    this.value = round4(this.value + delta);
    return delta;
  }
}

class AgentError extends Error {}
// A setting is wrong: a file that cannot be read, a bad URL (exit status 2).
class SettingsError extends AgentError {}

const log = (message) => process.stderr.write(`[node-agent] ${message}\n`);

// ---------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------

const USAGE = `usage: node agent.js [options]

  --hub-url URL[,URL…]   env LEARNING_HUB_URL (default https://localhost:3015);
                         a replicated hub's endpoints comma-separated
  --instance-id ID       env INSTANCE_ID (must match the certificate)
  --certs-dir DIR        env LEARNING_HUB_CERTS_DIR (default ./certs)
  --ca FILE --cert FILE --key FILE
                         default CERTS_DIR/ca.pem, CERTS_DIR/<id>.pem, CERTS_DIR/<id>.key
  --api-key KEY          env HUB_API_KEY (preferred: flags show up in process lists)
  --server-name NAME     TLS name to verify (default: the URL's host)
  --region NAME          default dev
  --context KEY=VALUE    context attribute (repeatable; default lang=node)
  --metric NAME          the toy metric to improve (default learningVelocity)
  --start-value X        default 0.55
  --cycles N             default 5
  --interval SECONDS     between cycles (stands in for the bootstrap's cycle_interval_ms; default 0)
  --after-sequence N     subscribe to insights after this sequence (default 0)
  --wait-insights N      after the cycles, wait until N insights arrived
  --timeout SECONDS      for --wait-insights (default 60)
  --seed N               seed of the toy metric's noise (default: from the instance id)`;

function usageError(message) {
  console.error(`${USAGE}\n\nagent.js: error: ${message}`);
  process.exit(2);
}

function number(name, text, { integer = false, min = -Infinity, max = Infinity } = {}) {
  const value = Number(text);
  if (text === '' || !Number.isFinite(value) || (integer && !Number.isInteger(value)) || value < min || value > max) {
    usageError(`--${name} ${JSON.stringify(text)}: expected ${integer ? 'an integer' : 'a number'} within [${min}, ${max}]`);
  }
  return value;
}

function parseSettings(argv) {
  const env = process.env;
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      options: {
        'hub-url': { type: 'string', default: env.LEARNING_HUB_URL || 'https://localhost:3015' },
        'instance-id': { type: 'string', default: env.INSTANCE_ID || '' },
        'certs-dir': { type: 'string', default: env.LEARNING_HUB_CERTS_DIR || 'certs' },
        ca: { type: 'string' },
        cert: { type: 'string' },
        key: { type: 'string' },
        'api-key': { type: 'string', default: env.HUB_API_KEY || '' },
        'server-name': { type: 'string' },
        region: { type: 'string', default: 'dev' },
        context: { type: 'string', multiple: true, default: [] },
        metric: { type: 'string', default: 'learningVelocity' },
        'start-value': { type: 'string', default: '0.55' },
        cycles: { type: 'string', default: '5' },
        interval: { type: 'string', default: '0' },
        'after-sequence': { type: 'string', default: '0' },
        'wait-insights': { type: 'string', default: '0' },
        timeout: { type: 'string', default: '60' },
        seed: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    }).values;
  } catch (e) {
    usageError(e.message);
  }
  if (parsed.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const id = parsed['instance-id'];
  if (!id) usageError('no instance id: set INSTANCE_ID or pass --instance-id');
  if (!parsed['api-key']) {
    usageError(`no API key: set HUB_API_KEY (an operator prints one with \`learning-hub admin keys issue ${id}\`)`);
  }
  const context = {};
  for (const item of parsed.context.length ? parsed.context : ['lang=node']) {
    const at = item.indexOf('=');
    if (at <= 0) usageError(`--context ${JSON.stringify(item)}: expected KEY=VALUE`);
    context[item.slice(0, at)] = item.slice(at + 1);
  }
  const certs = parsed['certs-dir'];
  return {
    hubUrl: parsed['hub-url'],
    instanceId: id,
    ca: parsed.ca || path.join(certs, 'ca.pem'),
    cert: parsed.cert || path.join(certs, `${id}.pem`),
    key: parsed.key || path.join(certs, `${id}.key`),
    apiKey: parsed['api-key'],
    serverName: parsed['server-name'],
    region: parsed.region,
    context,
    metric: parsed.metric,
    startValue: number('start-value', parsed['start-value'], { min: 0, max: 1 }),
    cycles: number('cycles', parsed.cycles, { integer: true, min: 0 }),
    interval: number('interval', parsed.interval, { min: 0 }),
    afterSequence: BigInt(number('after-sequence', parsed['after-sequence'], { integer: true, min: 0 })),
    waitInsights: number('wait-insights', parsed['wait-insights'], { integer: true, min: 0 }),
    timeout: number('timeout', parsed.timeout, { min: 0 }),
    seed: parsed.seed === undefined ? [...Buffer.from(id)].reduce((a, b) => a + b, 0) : number('seed', parsed.seed, { integer: true }),
  };
}

// `https://host:port` -> "host:port".
function targetOf(url) {
  let parts;
  try {
    parts = new URL(url.includes('://') ? url : `https://${url}`);
  } catch (e) {
    throw new SettingsError(`hub URL ${JSON.stringify(url)}: ${e.message}`);
  }
  if (parts.protocol !== 'https:') throw new SettingsError(`hub URL ${JSON.stringify(url)}: the hub speaks only TLS, use https://`);
  if (!parts.hostname) throw new SettingsError(`hub URL ${JSON.stringify(url)} has no host`);
  return `${parts.hostname}:${parts.port || 3015}`;
}

function readFile(file, what, hint) {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw new SettingsError(`cannot read the ${what} ${file}: ${e.code === 'ENOENT' ? 'no such file' : e.message}; ${hint}`);
  }
}

function loadHubService() {
  const definition = protoLoader.loadSync(PROTO, {
    includeDirs: [PROTO_ROOT],
    keepCase: true, // field names as in the proto: after_sequence, value_before …
    longs: String, // uint64 as decimal strings (sequences are compared as BigInt)
    enums: String, // enum values by name, e.g. CONFIG_SOURCE_DEFAULT
    defaults: true,
    oneofs: true, // google.protobuf.Value says which `kind` it holds
  });
  return grpc.loadPackageDefinition(definition).learninghub.v1.Hub;
}

function hubUrls(settings) {
  const urls = settings.hubUrl
    .split(',')
    .map((u) => u.trim())
    .filter((u) => u);
  if (urls.length === 0) throw new SettingsError(`hub URL ${JSON.stringify(settings.hubUrl)} names no endpoint`);
  return urls;
}

function connect(settings, url, several) {
  const issue = `issue one with \`learning-hub certs issue ${settings.instanceId}\``;
  const ca = readFile(settings.ca, 'CA certificate', "it is the hub's certs/ca.pem");
  const cert = readFile(settings.cert, 'instance certificate', issue);
  const key = readFile(settings.key, 'instance key', issue);
  const tls = grpc.credentials.createSsl(ca, key, cert);
  // Sends `authorization: Bearer <key>` with every call.
  const apiKey = grpc.credentials.createFromMetadataGenerator((_params, callback) => {
    const metadata = new grpc.Metadata();
    metadata.set('authorization', `Bearer ${settings.apiKey}`);
    callback(null, metadata);
  });
  const options = {
    // One endpoint: grpc-js retries reads there. Several: the agent moves on
    // at once instead (a retry against a replica that is down only delays).
    'grpc.service_config': JSON.stringify(several ? {} : SERVICE_CONFIG),
    'grpc.enable_retries': several ? 0 : 1,
    // Reconnect quickly after a hub restart.
    'grpc.initial_reconnect_backoff_ms': 100,
    'grpc.max_reconnect_backoff_ms': 2000,
    'grpc.keepalive_time_ms': 30_000,
    'grpc.keepalive_timeout_ms': 10_000,
  };
  if (settings.serverName) options['grpc.ssl_target_name_override'] = settings.serverName;
  const HubService = loadHubService();
  return new HubService(targetOf(url), grpc.credentials.combineChannelCredentials(tls, apiKey), options);
}

// ---------------------------------------------------------------------------
// The hub's endpoints
// ---------------------------------------------------------------------------

// One client per endpoint; calls go to the current one. On UNAVAILABLE the
// call moves to the next endpoint and is sent again (each endpoint tried
// twice at most). Answers carry the log position they were computed at
// (x-hub-log-pos); calls send the highest seen (x-hub-min-pos).
class Hub {
  constructor(urls, clients) {
    this.urls = urls;
    this.clients = clients;
    this.current = 0;
    this.position = 0n;
    this.failovers = 0;
  }

  metadata() {
    const metadata = new grpc.Metadata();
    if (this.position > 0n) metadata.set('x-hub-min-pos', this.position.toString());
    return metadata;
  }

  observe(metadata) {
    const [value] = metadata.get('x-hub-log-pos');
    if (typeof value === 'string' && /^[0-9]+$/.test(value) && BigInt(value) > this.position) {
      this.position = BigInt(value);
    }
  }

  // After `error` from endpoint `index`: moves to the next endpoint when
  // there is one and the error says another might answer.
  failOver(index, error) {
    if (this.clients.length < 2 || error.code !== grpc.status.UNAVAILABLE) return false;
    if (this.current === index) {
      this.current = (index + 1) % this.clients.length;
      this.failovers += 1;
      log(`${this.urls[index]}: ${error.details}; moving to ${this.urls[this.current]}`);
    }
    return true;
  }

  once(index, method, request) {
    return new Promise((resolve, reject) => {
      const call = this.clients[index][method](
        request,
        this.metadata(),
        { deadline: Date.now() + CALL_TIMEOUT_MS },
        (error, response) => (error ? reject(error) : resolve(response)),
      );
      call.on('metadata', (metadata) => this.observe(metadata));
    });
  }

  async call(method, request) {
    const attempts = 2 * this.clients.length;
    for (let attempt = 0; ; attempt += 1) {
      const index = this.current;
      try {
        return await this.once(index, method, request);
      } catch (error) {
        if (attempt === attempts - 1 || !this.failOver(index, error)) throw error;
        await new Promise((r) => setTimeout(r, 50 * attempt));
      }
    }
  }

  // [endpoint index, the call] of SubscribeInsights on the current endpoint.
  subscribe(request) {
    const index = this.current;
    return [index, this.clients[index].SubscribeInsights(request, this.metadata())];
  }

  close() {
    for (const client of this.clients) client.close();
  }
}

function explain(method, error, settings) {
  const name = grpc.status[error.code] || String(error.code);
  const message = `${method} failed: ${name}: ${error.details}`;
  const hints = {
    [grpc.status.UNAUTHENTICATED]: `HUB_API_KEY must be the key issued for ${settings.instanceId} (\`learning-hub admin keys issue ${settings.instanceId}\`)`,
    [grpc.status.PERMISSION_DENIED]: `the instance id (${settings.instanceId}) must be the one in the certificate ${settings.cert}`,
    [grpc.status.UNAVAILABLE]: `is the hub running at ${settings.hubUrl}, and is ${settings.ca} its CA?`,
  };
  return hints[error.code] ? `${message} (${hints[error.code]})` : message;
}

// ---------------------------------------------------------------------------
// The insight subscription
// ---------------------------------------------------------------------------

const PERMANENT = new Set([
  grpc.status.INVALID_ARGUMENT,
  grpc.status.PERMISSION_DENIED,
  grpc.status.UNAUTHENTICATED,
  grpc.status.UNIMPLEMENTED,
]);

// Reads SubscribeInsights; when the stream breaks it subscribes again with
// after_sequence = the last sequence received — on the next endpoint, if
// there are several (replicas number insights alike) — so a hub restart
// costs neither an insight nor a duplicate.
class InsightSubscriber {
  constructor(hub, afterSequence) {
    this.hub = hub;
    this.last = afterSequence; // BigInt
    this.sequences = [];
    this.titles = [];
    this.resumedFrom = [];
    this.duplicates = 0;
    this.error = null;
    this.stopping = false;
    this.call = null;
    this.timer = null;
    this.backoff = 100;
    this.waiters = [];
  }

  start() {
    this.subscribe(true);
  }

  subscribe(first) {
    if (this.stopping) return;
    if (!first) this.resumedFrom.push(Number(this.last));
    const [index, call] = this.hub.subscribe({ after_sequence: this.last.toString() });
    this.call = call;
    call.on('data', (item) => {
      const insight = item.insight;
      if (!insight) return;
      const sequence = BigInt(insight.sequence);
      if (sequence <= this.last) {
        this.duplicates += 1; // the hub promises none; counted, not delivered
        return;
      }
      this.last = sequence;
      this.sequences.push(Number(sequence));
      this.titles.push(insight.title);
      this.backoff = 100;
      log(`insight #${sequence}: ${insight.title}`);
      this.notify();
    });
    // grpc-js emits 'error' for a non-OK status and then 'status'; the
    // 'status' handler decides what happens next.
    call.on('error', () => {});
    call.on('status', (status) => {
      if (this.stopping || call !== this.call) return;
      const name = grpc.status[status.code] || String(status.code);
      if (PERMANENT.has(status.code)) {
        this.error = `SubscribeInsights: ${name}: ${status.details}`;
        log(this.error);
        this.notify();
        return;
      }
      const reason = status.code === grpc.status.OK ? 'the stream ended' : `${name}: ${status.details}`;
      if (this.hub.failOver(index, status)) this.backoff = 100;
      const delay = this.backoff * (1 + Math.random() * 0.2);
      log(`insight stream interrupted (${reason}); resuming after #${this.last} in ${(delay / 1000).toFixed(1)}s`);
      // By the time the timer fires every message already received has
      // been handled, so this.last is the true resume point.
      this.timer = setTimeout(() => this.subscribe(false), delay);
      this.backoff = Math.min(this.backoff * 2, 5000);
    });
  }

  notify() {
    for (const waiter of this.waiters.splice(0)) waiter();
  }

  // Resolves to true once `count` insights arrived, false on timeout or a
  // permanent error.
  waitFor(count, timeoutMs) {
    return new Promise((resolve) => {
      const deadline = setTimeout(() => resolve(false), timeoutMs);
      const check = () => {
        if (this.error || this.stopping) {
          clearTimeout(deadline);
          resolve(false);
        } else if (this.sequences.length >= count) {
          clearTimeout(deadline);
          resolve(true);
        } else {
          this.waiters.push(check);
        }
      };
      check();
    });
  }

  stop() {
    this.stopping = true;
    clearTimeout(this.timer);
    if (this.call) this.call.cancel();
    this.notify();
  }
}

// ---------------------------------------------------------------------------
// The agent
// ---------------------------------------------------------------------------

// google.protobuf.Value (as proto-loader decodes it) -> a JS value. With
// `oneofs: true`, `kind` names the field that is set. proto-loader takes the
// well-known types from protobufjs, whose field names are camelCase
// (numberValue) even with keepCase; snake_case is accepted too, for a
// struct.proto loaded from disk.
function valueToJs(value) {
  const kind = value && value.kind;
  if (!kind) return null;
  const inner = value[kind];
  switch (kind) {
    case 'listValue':
    case 'list_value':
      return ((inner && inner.values) || []).map(valueToJs);
    case 'structValue':
    case 'struct_value':
      return Object.fromEntries(Object.entries((inner && inner.fields) || {}).map(([k, v]) => [k, valueToJs(v)]));
    case 'nullValue':
    case 'null_value':
      return null;
    default:
      return inner; // numberValue, stringValue, boolValue
  }
}

class Agent {
  constructor(settings, hub) {
    this.settings = settings;
    this.hub = hub;
    this.metric = new ToyMetric(settings.metric, settings.startValue, rngFrom(settings.seed));
    this.recent = []; // [strategy, metric], newest first
    // Agent configuration; the bootstrap overrides it.
    this.config = { default_strategy: 'replay', prediction_confidence_threshold: 0.65, max_cycles: 0 };
    this.summary = {
      agent: 'node',
      instance_id: settings.instanceId,
      registered: false,
      cycles: 0,
      outcomes_shared: 0,
      patterns_shared: 0,
      recommendations_received: 0,
      recommendations_followed: 0,
      action_warnings: 0,
      plateaus_predicted: 0,
      share_predictions: 0,
      share_warnings: 0,
    };
    // The metric's value before each cycle and after the last.
    this.history = [];
    // The plateau model as last fetched.
    this.modelWeights = new Array(FEATURES + 1).fill(0.0);
    this.modelVersion = 0;
    // The model of this agent's context, and its share in predictions.
    this.contextWeights = new Array(FEATURES + 1).fill(0.0);
    this.contextShare = 0.0;
  }

  async call(method, request) {
    try {
      return await this.hub.call(method, request);
    } catch (error) {
      throw new AgentError(explain(method, error, this.settings));
    }
  }

  async register() {
    const s = this.settings;
    const response = await this.call('Register', {
      instance_id: s.instanceId,
      region: s.region,
      context: s.context,
      capabilities: Object.keys(STRATEGIES).map((name) => `strategy:${name}`),
    });
    this.summary.registered = true;
    this.summary.newly_registered = response.newly_registered;
    const bootstrap = response.bootstrap;
    const parameters = Object.fromEntries(Object.entries(bootstrap.parameters || {}).map(([k, v]) => [k, valueToJs(v)]));
    const applied = {};
    for (const key of ['default_strategy', 'prediction_confidence_threshold', 'max_cycles']) {
      if (key in parameters) this.config[key] = applied[key] = parameters[key];
    }
    log(
      `registered ${s.instanceId} in ${s.region} (${response.newly_registered ? 'new' : 'refreshed'}); ` +
        `bootstrap from ${bootstrap.source}: applied ${JSON.stringify(applied)}; cycle_interval_ms=${parameters.cycle_interval_ms} ` +
        `(a toy cycle waits --interval=${s.interval}s instead)`,
    );
    this.summary.bootstrap = {
      source: bootstrap.source,
      parameters,
      applied,
      proven_strategies: bootstrap.proven_strategies.map((r) => r.strategy),
    };
  }

  recentPb() {
    return this.recent.slice(0, 8).map(([strategy, metric], i) => ({ strategy, metric, cycles_ago: i + 1 }));
  }

  metricsPb(value, stuck) {
    const [other, otherValue] = OTHER_METRIC;
    return { [this.metric.name]: { value, stuck }, [other]: { value: otherValue, stuck: false } };
  }

  choose(recommendations, cycle) {
    const threshold = Number(this.config.prediction_confidence_threshold);
    for (const r of recommendations) {
      if (r.strategy in STRATEGIES && r.confidence >= threshold) {
        this.summary.recommendations_followed += 1;
        return [r.strategy, `hub recommends it (confidence ${r.confidence.toFixed(2)})`];
      }
    }
    // No confident recommendation this agent can apply: explore, starting
    // with the bootstrap's default strategy.
    const names = Object.keys(STRATEGIES);
    const start = Math.max(0, names.indexOf(this.config.default_strategy));
    return [names[(start + cycle) % names.length], 'exploring'];
  }

  async cycle(cycle, lastDelta) {
    const s = this.settings;
    const metric = this.metric;
    const before = metric.value;
    this.history.push(before);
    let stuck = lastDelta === null || lastDelta < PLATEAU_GAIN;
    const features = plateauFeatures(this.history);
    if (!stuck && this.modelVersion > 0 && features && predictPersonal(this.modelWeights, this.contextWeights, this.contextShare, features) >= 0.5) {
      // The fleet's model sees a plateau coming: act as on one.
      stuck = true;
      this.summary.plateaus_predicted += 1;
    }
    const { recommendations } = await this.call('GetStrategies', {
      metric: metric.name,
      current_value: before,
      context: s.context,
      limit: 5,
      recent: this.recentPb(),
    });
    this.summary.recommendations_received += recommendations.length;
    let [strategy, why] = this.choose(recommendations, cycle);
    const check = await this.call('CheckAction', {
      strategy,
      metric: metric.name,
      metrics: this.metricsPb(before, stuck),
      recent: this.recentPb(),
      context: s.context,
    });
    if (!check.safe) {
      this.summary.action_warnings += check.warnings.length;
      if (check.safer_alternative in STRATEGIES) {
        const warning = check.warnings.length ? check.warnings[0].message : 'not safe';
        why = `CheckAction warned (${warning}); safer: ${check.safer_alternative}`;
        strategy = check.safer_alternative;
      }
    }
    const delta = metric.apply(strategy);
    const successful = delta > 0;
    if (stuck) {
      await this.call('SharePattern', {
        metrics: this.metricsPb(before, true),
        cycles_until_plateau: cycle,
        recovery_strategies: successful ? [strategy] : [],
        environment: s.context,
        target_metric: metric.name,
        // One id per logical write: sent again (another replica, a
        // retry), it counts once.
        request_id: crypto.randomUUID(),
      });
      this.summary.patterns_shared += 1;
    }
    const shared = await this.call('ShareStrategy', {
      strategy,
      metric: metric.name,
      value_before: before,
      successful,
      delta,
      condition: stuck ? 'on plateau' : '',
      context: s.context,
      recent: this.recentPb(),
      request_id: crypto.randomUUID(),
      // The metric's recent values, ending after this application: the
      // answer carries the fleet model's plateau prediction for it.
      trajectory: [...this.history, metric.value].slice(-32),
    });
    this.summary.outcomes_shared += 1;
    if (shared.plateau) {
      this.summary.share_predictions += 1;
      this.summary.share_warnings += shared.plateau.warning ? 1 : 0;
    }
    this.recent.unshift([strategy, metric.name]);
    log(
      `cycle ${cycle + 1}: ${metric.name} ${before.toFixed(3)}${stuck ? ' (plateau)' : ''}; ` +
        `${recommendations.length} recommendation(s); applied ${strategy} (${why}): ${delta >= 0 ? '+' : ''}${delta.toFixed(4)}; ` +
        `outcome #${shared.outcome_sequence} shared`,
    );
    return delta;
  }

  async runCycles() {
    let cycles = this.settings.cycles;
    if (Number(this.config.max_cycles) > 0) cycles = Math.min(cycles, Number(this.config.max_cycles));
    this.summary.metric = { name: this.metric.name, start: this.metric.value };
    let lastDelta = null;
    for (let cycle = 0; cycle < cycles; cycle += 1) {
      if (cycle && this.settings.interval) await new Promise((r) => setTimeout(r, this.settings.interval * 1000));
      lastDelta = await this.cycle(cycle, lastDelta);
      this.summary.cycles += 1;
    }
    this.summary.metric.end = this.metric.value;
    this.history.push(this.metric.value);
  }

  async fetchModel() {
    const model = await this.call('GetModel', { model: PLATEAU_MODEL, known_version: String(this.modelVersion) });
    if (!model.unchanged) {
      this.modelWeights = model.weights.map(Number);
      this.modelVersion = Number(model.version);
    }
    return model;
  }

  async fetchContextModel() {
    const model = await this.call('GetModel', { model: PLATEAU_MODEL, context_model: true });
    this.contextWeights = model.weights.map(Number);
    this.contextShare = Number(model.context_share);
    return model;
  }

  // A ShareModelUpdate trained from `weights` (version `version`), with the
  // served weights evaluated on the held-out examples.
  updateRequest(weights, version, trainOn, heldOut, contextModel) {
    const request = {
      model: PLATEAU_MODEL,
      base_version: String(version),
      delta: train(weights, trainOn),
      examples: String(trainOn.length),
      request_id: crypto.randomUUID(),
      context_model: contextModel,
    };
    if (heldOut.length) request.evaluation = evaluate(weights, heldOut);
    return request;
  }

  // Trains the plateau model, and the model of this agent's context, on its
  // trajectory (holding some examples out to evaluate the served versions
  // on) and sends the changes of the weights; then compares the hub's
  // prediction for the trajectory with its own.
  async shareModel() {
    await this.fetchModel();
    const examples = plateauExamples(this.history);
    const cut = examples.length - Math.trunc(examples.length * HELD_OUT_SHARE);
    const trainOn = examples.slice(0, cut);
    const heldOut = examples.slice(cut);
    const report = { base_version: this.modelVersion, examples: examples.length };
    if (trainOn.length) {
      let answer = await this.call(
        'ShareModelUpdate',
        this.updateRequest(this.modelWeights, this.modelVersion, trainOn, heldOut, false),
      );
      Object.assign(report, { update_sent: true, pending: answer.pending, new_version: Number(answer.new_version) });
      // The context's own model: only this context's instances move it, and
      // it counts in predictions as far as their evaluations show it
      // predicts them better than the fleet's (context_share).
      const context = await this.fetchContextModel();
      answer = await this.call(
        'ShareModelUpdate',
        this.updateRequest(this.contextWeights, Number(context.version), trainOn, heldOut, true),
      );
      report.context_model = {
        context: context.context,
        base_version: Number(context.version),
        update_sent: true,
        pending: answer.pending,
        new_version: Number(answer.new_version),
      };
    }
    const trajectory = this.history.slice(-32);
    // Another instance may make a new version between the fetch and the
    // prediction: compare only answers from the same versions.
    for (let attempt = 0; attempt < 3; attempt += 1) {
      await this.fetchModel();
      const context = await this.fetchContextModel();
      const predicted = await this.call('PredictPlateau', {
        metrics: [{ metric: this.metric.name, values: trajectory }],
        context: this.settings.context,
      });
      if (
        Number(predicted.model_version) === this.modelVersion &&
        // The hub names the context model's version only when it mixed it
        // in (a share above 0).
        Number(predicted.context_model_version) === (this.contextShare > 0 ? Number(context.version) : 0) &&
        Number(predicted.context_share) === this.contextShare
      ) {
        Object.assign(report, {
          version: this.modelVersion,
          hub_probability: predicted.predictions[0].probability,
          own_probability: predictPersonal(
            this.modelWeights,
            this.contextWeights,
            this.contextShare,
            plateauFeatures(trajectory),
          ),
          context_share: this.contextShare,
          warning: predicted.predictions[0].warning,
        });
        break;
      }
    }
    log(`plateau model: ${JSON.stringify(report)}`);
    this.summary.model = report;
  }
}

async function main() {
  const settings = parseSettings(process.argv.slice(2));
  let error = null;
  let status = 1;
  let hub = null;
  let agent = null;
  let subscriber = null;
  const onSignal = () => {
    error = 'interrupted';
    if (subscriber) subscriber.stop();
  };
  process.once('SIGINT', onSignal);
  try {
    const urls = hubUrls(settings);
    hub = new Hub(
      urls,
      urls.map((url) => connect(settings, url, urls.length > 1)),
    );
    agent = new Agent(settings, hub);
    await agent.register();
    subscriber = new InsightSubscriber(hub, settings.afterSequence);
    subscriber.start();
    await agent.runCycles();
    await agent.shareModel();
    if (settings.waitInsights && !(await subscriber.waitFor(settings.waitInsights, settings.timeout * 1000))) {
      error = subscriber.error || `received ${subscriber.sequences.length} of ${settings.waitInsights} insights within ${settings.timeout}s`;
    }
  } catch (e) {
    if (!(e instanceof AgentError)) throw e;
    error = e.message;
    status = e instanceof SettingsError ? 2 : 1;
  } finally {
    if (subscriber) subscriber.stop();
    if (hub) hub.close();
  }

  const summary = agent ? agent.summary : { agent: 'node', registered: false };
  if (subscriber) {
    error = error || subscriber.error;
    Object.assign(summary, {
      insights_received: subscriber.sequences.length,
      insight_sequences: subscriber.sequences,
      insight_titles: subscriber.titles,
      duplicates_dropped: subscriber.duplicates,
      resumes: subscriber.resumedFrom.length,
      resumed_from: subscriber.resumedFrom,
    });
  }
  if (hub) Object.assign(summary, { failovers: hub.failovers, log_position: Number(hub.position) });
  summary.error = error;
  summary.ok = error === null;
  if (error) log(`error: ${error}`);
  process.stdout.write(`${JSON.stringify(summary)}\n`);
  process.exitCode = error === null ? 0 : status;
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
