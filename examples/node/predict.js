#!/usr/bin/env node
// A Node client of the alutwin twin, written from the .proto files alone (@grpc/grpc-js + @grpc/proto-loader):
// health check, GetServingInfo, ListModels, one full Predict and one lean Predict (field mask, stride, float32
// arrays), printed as one JSON object. docs/clients.md explains the requests.
//
// Usage:  node predict.js [--proto DIR] ADDRESS [REQUEST.json]      (the request from stdin without a file)
//
// REQUEST.json: {"model": "cell", "x0": [[8 numbers], ...], "u": [[[5 numbers], ...], ...],
//                "outputs": [names, optional], "stride": 6 (the lean call's, optional)}
// x0 is (B, 8) and u (B, H, 5), in the order of ServingInfo.states and .inputs.
//
// Arrays in the output are {"shape": [...], "dtype": "<f8", "b64": base64 of the little-endian float64 values},
// re-encoded from the decoded numbers, so that a reader can compare them bit for bit.

'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const REPO_PROTO = path.resolve(__dirname, '..', '..', 'proto'); // alutwin/v1/*.proto
const HEALTH_PROTO = path.join(__dirname, 'proto'); // grpc/health/v1/health.proto (the standard file)
const DEADLINE_MS = 30000;
const MAX_MESSAGE_BYTES = 64 << 20; // grpc-js receives at most 4 MiB unless told

// keepCase: the field names of the .proto files; longs: Number (uint64 shapes and versions stay far below
// 2^53); enums as their names; defaults: absent message fields read as null, scalars as their zero.
const LOADER_OPTIONS = { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true };

/** The grpc-js service constructors of the twin and of grpc.health.v1. */
function loadServices(protoDir = REPO_PROTO) {
  // google/protobuf/field_mask.proto and timestamp.proto, imported by twin.proto, are bundled with
  // protobufjs (proto-loader's parser): they need no include directory.
  const definition = protoLoader.loadSync(
    [path.join(protoDir, 'alutwin/v1/twin.proto'), path.join(HEALTH_PROTO, 'grpc/health/v1/health.proto')],
    { ...LOADER_OPTIONS, includeDirs: [protoDir, HEALTH_PROTO] },
  );
  const pkg = grpc.loadPackageDefinition(definition);
  return {
    PredictionService: pkg.alutwin.v1.PredictionService,
    ModelRegistry: pkg.alutwin.v1.ModelRegistry,
    Health: pkg.grpc.health.v1.Health,
  };
}

/** The shape and the row-major values of a rectangular nested array of numbers. */
function flatten(nested, name) {
  const shape = [];
  for (let a = nested; Array.isArray(a); a = a[0]) shape.push(a.length);
  const values = [];
  const walk = (a, axis) => {
    if (axis === shape.length) {
      if (typeof a !== 'number') throw new Error(`${name} holds ${JSON.stringify(a)}, expected a number`);
      values.push(a);
      return;
    }
    if (!Array.isArray(a) || a.length !== shape[axis]) {
      throw new Error(`${name} is not rectangular: axis ${axis} should have length ${shape[axis]}`);
    }
    for (const b of a) walk(b, axis + 1);
  };
  walk(nested, 0);
  return { shape, values };
}

/** A DoubleArray message: float64 little-endian bytes (`raw`), or rounded to float32 (`raw_f32`). */
function encodeArray(nested, name, f32 = false) {
  const { shape, values } = flatten(nested, name);
  const item = f32 ? 4 : 8;
  const buf = Buffer.alloc(item * values.length);
  values.forEach((v, i) => (f32 ? buf.writeFloatLE(v, 4 * i) : buf.writeDoubleLE(v, 8 * i)));
  return f32 ? { shape, raw_f32: buf } : { shape, raw: buf };
}

/** The float64 values of a DoubleArray (row-major) and its shape; null when the field is absent. */
function decodeArray(msg, name) {
  if (msg == null) return null;
  const shape = msg.shape.map(Number);
  const size = shape.reduce((n, d) => n * d, 1);
  const out = new Float64Array(size);
  if (msg.raw.length > 0) {
    if (msg.raw.length !== 8 * size) throw new Error(`${name}.raw holds ${msg.raw.length} bytes for ${shape}`);
    for (let i = 0; i < size; i++) out[i] = msg.raw.readDoubleLE(8 * i);
  } else if (msg.raw_f32.length > 0) {
    if (msg.raw_f32.length !== 4 * size) throw new Error(`${name}.raw_f32 holds ${msg.raw_f32.length} bytes for ${shape}`);
    for (let i = 0; i < size; i++) out[i] = msg.raw_f32.readFloatLE(4 * i); // widened exactly
  } else {
    if (msg.values.length !== size) throw new Error(`${name}.values holds ${msg.values.length} numbers for ${shape}`);
    out.set(msg.values);
  }
  return { shape, values: out };
}

/** {"shape", "dtype", "b64"} of decoded values: their little-endian float64 bytes, whatever the host's order. */
function arrayJson(a) {
  if (a == null) return null;
  const buf = Buffer.alloc(8 * a.values.length);
  a.values.forEach((v, i) => buf.writeDoubleLE(v, 8 * i));
  return { shape: a.shape, dtype: '<f8', b64: buf.toString('base64') };
}

/** A unary call as a promise, with a deadline. */
function unary(client, method, request, metadata = new grpc.Metadata()) {
  return new Promise((resolve, reject) => {
    const options = { deadline: Date.now() + DEADLINE_MS };
    client[method](request, metadata, options, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

function predictionJson(r) {
  const mean = decodeArray(r.mean, 'mean');
  return {
    model: r.model,
    n_members: r.n_members,
    dt_s: r.dt_s,
    stride: r.stride,
    output_names: r.output_names,
    mean: arrayJson(mean),
    spread: arrayJson(decodeArray(r.spread, 'spread')),
    outputs: arrayJson(decodeArray(r.outputs, 'outputs')),
    // the last returned state of scenario 0, as numbers (shortest round-trip decimals: exact)
    last_state: mean && Array.from(mean.values.subarray(8 * (mean.shape[1] - 1), 8 * mean.shape[1])),
    validity: r.validity.map((v) => ({
      domain_exit_step: v.domain_exit_step,
      envelope_exit_step: v.envelope_exit_step,
      diverged_members: v.diverged_members,
    })),
    envelope_known: r.envelope_known,
  };
}

/** Every call of the example against the twin at `address`; returns the JSON-ready result. */
async function run(address, job, protoDir = REPO_PROTO) {
  const services = loadServices(protoDir);
  const options = {
    'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
  };
  const predictor = new services.PredictionService(address, grpc.credentials.createInsecure(), options);
  const shared = { ...options, channelOverride: predictor.getChannel() }; // one connection for all three
  const registry = new services.ModelRegistry(address, grpc.credentials.createInsecure(), shared);
  const health = new services.Health(address, grpc.credentials.createInsecure(), shared);
  try {
    const result = { health: {} };
    for (const service of ['', 'alutwin.v1.PredictionService']) {
      result.health[service] = (await unary(health, 'Check', { service })).status;
    }
    const info = await unary(predictor, 'GetServingInfo', {});
    result.serving_info = {
      max_batch: info.max_batch,
      max_horizon: info.max_horizon,
      max_work: info.max_work,
      max_message_bytes: info.max_message_bytes,
      response_overhead_bytes: info.response_overhead_bytes,
      default_alias: info.default_alias,
      states: info.states.map((s) => s.name),
      inputs: info.inputs.map((s) => s.name),
      default_outputs: info.default_outputs,
      served_versions: info.served_versions.map((v) => ({ name: v.name, version: v.version, n_members: v.n_members })),
    };
    const listing = await unary(registry, 'ListModels', {});
    result.models = listing.models.map((m) => ({
      name: m.name,
      versions: m.versions.map((v) => v.version),
      aliases: m.aliases,
    }));

    // The full prediction: the alias "champion" (a ModelRef with neither version nor alias), float64 both ways.
    const full = await unary(predictor, 'Predict', {
      model: { name: job.model },
      x0: encodeArray(job.x0, 'x0'),
      u: encodeArray(job.u, 'u'),
      outputs: job.outputs || [],
      encoding: 'ARRAY_ENCODING_RAW',
    });
    result.predict = predictionJson(full);

    // The lean request of a potline client: the version just served (pinned), only mean and outputs, every
    // stride-th step, arrays rounded to float32 both ways (half the bytes).
    const lean = await unary(predictor, 'Predict', {
      model: { name: job.model, version: full.model.version },
      x0: encodeArray(job.x0, 'x0', true),
      u: encodeArray(job.u, 'u', true),
      outputs: job.outputs || [],
      encoding: 'ARRAY_ENCODING_RAW_F32',
      field_mask: { paths: ['mean', 'outputs'] },
      stride: job.stride || 6,
    });
    result.lean = predictionJson(lean);
    return result;
  } finally {
    health.close();
    registry.close();
    predictor.close();
  }
}

async function main(argv = process.argv.slice(2)) {
  let protoDir = REPO_PROTO;
  if (argv[0] === '--proto') {
    protoDir = path.resolve(argv[1]);
    argv = argv.slice(2);
  }
  if (argv.length < 1 || argv.length > 2) {
    process.stderr.write('usage: node predict.js [--proto DIR] ADDRESS [REQUEST.json]\n');
    return 2;
  }
  const job = JSON.parse(fs.readFileSync(argv.length === 2 ? argv[1] : 0, 'utf8'));
  try {
    process.stdout.write(JSON.stringify(await run(argv[0], job, protoDir)) + '\n');
    return 0;
  } catch (err) {
    if (err.code === undefined) throw err;
    // a gRPC error: its status code by name and the server's message
    const error = { code: grpc.status[err.code], details: err.details };
    process.stderr.write(JSON.stringify({ error }) + '\n');
    return 1;
  }
}

module.exports = { loadServices, encodeArray, decodeArray, run, main };

if (require.main === module) {
  main().then((code) => {
    process.exitCode = code;
  });
}
