'use strict';
// Node.js client of the credit authority (credit.v1.CreditAuthority).
//
// The protos are loaded at run time from ../../protos (the same files the
// server is built from), so there is no generated code to keep in sync.
//
//   const { CreditAuthorityClient } = require('./credit');
//   const client = new CreditAuthorityClient({ address: '127.0.0.1:50051', token: process.env.CREDIT_SERVICE_TOKEN });
//   const hold = await client.reserve({ request_id, user_id, amount_millicredits: 50, service_type: 'llm_inference' });
//   const done = await client.commit({ reservation_id: hold.reservation_id, amount_millicredits: 17 });
//   client.close();
//
// Field names are the proto names (snake_case). int64 fields come back as
// decimal strings (money is int64 millicredits; strings never lose precision);
// send them as numbers or strings. Enums come back as names ("ORG", "INDIVIDUAL").

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'protos');
const PROTO_FILES = ['credit/v1/types.proto', 'credit/v1/authority.proto', 'credit/v1/admin.proto'];

const LOADER_OPTIONS = {
  keepCase: true, // user_id, amount_millicredits: the names in the .proto files
  longs: String, // int64 → "12345"
  enums: String, // Funding.Kind → "ORG"
  defaults: true, // zero values are present (allowed: false, available_millicredits: "0")
  oneofs: true,
  includeDirs: [PROTO_ROOT],
};

let cachedPackage = null;

/** The loaded `credit.v1` package: `{ CreditAuthority, CreditAdmin, ... }` service constructors. */
function loadCreditPackage() {
  if (!cachedPackage) {
    const definition = protoLoader.loadSync(PROTO_FILES, LOADER_OPTIONS);
    cachedPackage = grpc.loadPackageDefinition(definition).credit.v1;
  }
  return cachedPackage;
}

function channelCredentials(tls) {
  if (!tls) return grpc.credentials.createInsecure();
  if (tls === true) return grpc.credentials.createSsl();
  return tls; // a grpc.ChannelCredentials built by the caller
}

// ---- google.rpc.Status details (grpc-status-details-bin) -------------------
// A minimal protobuf reader: enough for google.rpc.Status → Any → ErrorInfo /
// BadRequest, so callers get `available`, `requested`, `funding` of a
// RESOURCE_EXHAUSTED without another dependency.

function readFields(buf) {
  const fields = [];
  let pos = 0;
  const varint = () => {
    let result = 0n;
    let shift = 0n;
    for (;;) {
      if (pos >= buf.length) throw new Error('truncated varint');
      const byte = buf[pos++];
      result |= BigInt(byte & 0x7f) << shift;
      if (!(byte & 0x80)) return result;
      shift += 7n;
    }
  };
  while (pos < buf.length) {
    const key = Number(varint());
    const number = key >>> 3;
    const wire = key & 7;
    if (wire === 0) fields.push({ number, value: varint() });
    else if (wire === 2) {
      const len = Number(varint());
      fields.push({ number, value: buf.subarray(pos, pos + len) });
      pos += len;
    } else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else throw new Error(`unsupported wire type ${wire}`);
  }
  return fields;
}

const text = (bytes) => Buffer.from(bytes).toString('utf8');

function decodeErrorInfo(bytes) {
  const info = { reason: '', domain: '', metadata: {} };
  for (const f of readFields(bytes)) {
    if (f.number === 1) info.reason = text(f.value);
    else if (f.number === 2) info.domain = text(f.value);
    else if (f.number === 3) {
      let key = '';
      let value = '';
      for (const e of readFields(f.value)) {
        if (e.number === 1) key = text(e.value);
        else if (e.number === 2) value = text(e.value);
      }
      info.metadata[key] = value;
    }
  }
  return info;
}

function decodeBadRequest(bytes) {
  const violations = [];
  for (const f of readFields(bytes)) {
    if (f.number !== 1) continue;
    const v = { field: '', description: '' };
    for (const g of readFields(f.value)) {
      if (g.number === 1) v.field = text(g.value);
      else if (g.number === 2) v.description = text(g.value);
    }
    violations.push(v);
  }
  return { field_violations: violations };
}

/**
 * Decodes the rich error details of a failed call: `{ errorInfo, badRequest }`
 * (each null when absent). `errorInfo.metadata` of INSUFFICIENT_CREDITS holds
 * `available`, `requested` and `funding`.
 */
function errorDetails(error) {
  const out = { errorInfo: null, badRequest: null };
  const raw = error && error.metadata && error.metadata.get('grpc-status-details-bin');
  if (!raw || raw.length === 0) return out;
  for (const f of readFields(Buffer.from(raw[0]))) {
    if (f.number !== 3) continue; // Status.details (repeated Any)
    let typeUrl = '';
    let value = Buffer.alloc(0);
    for (const a of readFields(f.value)) {
      if (a.number === 1) typeUrl = text(a.value);
      else if (a.number === 2) value = a.value;
    }
    if (typeUrl.endsWith('/google.rpc.ErrorInfo')) out.errorInfo = decodeErrorInfo(value);
    else if (typeUrl.endsWith('/google.rpc.BadRequest')) out.badRequest = decodeBadRequest(value);
  }
  return out;
}

/** A plain object describing a gRPC error, suitable for JSON output. */
function describeError(error) {
  const details = errorDetails(error);
  const code = typeof error.code === 'number' ? error.code : grpc.status.UNKNOWN;
  return {
    code,
    status: Object.keys(grpc.status).find((k) => grpc.status[k] === code) || 'UNKNOWN',
    message: error.details || error.message,
    ...(details.errorInfo ? { error_info: details.errorInfo } : {}),
    ...(details.badRequest ? { bad_request: details.badRequest } : {}),
  };
}

/**
 * A plain JSON-able object → google.protobuf.Struct as proto-loader expects it
 * (for the `metadata` of Reserve and Commit). The well-known types come from
 * protobufjs's bundled definitions, whose field names are camelCase whatever
 * `keepCase` says, hence `stringValue` and not `string_value`.
 */
function toStruct(object) {
  const value = (v) => {
    if (v === null || v === undefined) return { nullValue: 'NULL_VALUE' };
    if (typeof v === 'number') return { numberValue: v };
    if (typeof v === 'string') return { stringValue: v };
    if (typeof v === 'boolean') return { boolValue: v };
    if (Array.isArray(v)) return { listValue: { values: v.map(value) } };
    if (typeof v === 'object') return { structValue: toStruct(v) };
    throw new TypeError(`cannot put a ${typeof v} into a Struct`);
  };
  const fields = {};
  for (const [k, v] of Object.entries(object || {})) fields[k] = value(v);
  return { fields };
}

// ---- the client ------------------------------------------------------------

/**
 * Promise-based client of credit.v1.CreditAuthority that sends
 * `authorization: Bearer <token>` with every call.
 *
 * options: address ("host:port"), token (a spend token), tls (false: plaintext;
 * true: system roots; or a grpc.ChannelCredentials), deadlineMs (per call,
 * default 10 s), channelOptions (passed to grpc-js).
 */
class CreditAuthorityClient {
  constructor({ address, token, tls = false, deadlineMs = 10_000, channelOptions = {} } = {}) {
    if (!address) throw new Error('address is required, e.g. "127.0.0.1:50051"');
    if (!token) throw new Error('token is required (a token with the spend role)');
    const { CreditAuthority } = loadCreditPackage();
    this.stub = new CreditAuthority(address, channelCredentials(tls), channelOptions);
    this.token = token;
    this.deadlineMs = deadlineMs;
  }

  metadata() {
    const md = new grpc.Metadata();
    md.set('authorization', `Bearer ${this.token}`);
    return md;
  }

  call(method, request, { deadlineMs } = {}) {
    const deadline = new Date(Date.now() + (deadlineMs || this.deadlineMs));
    return new Promise((resolve, reject) => {
      this.stub[method](request, this.metadata(), { deadline }, (error, response) => {
        if (error) reject(error);
        else resolve(response);
      });
    });
  }

  /** { user_id, org_id?, amount_millicredits } → { allowed, funding, available_millicredits } */
  check(request, opts) { return this.call('Check', request, opts); }

  /** { request_id, user_id, org_id?, amount_millicredits, ttl_seconds?, service_type, service_name, metadata? } */
  reserve(request, opts) { return this.call('Reserve', request, opts); }

  /** { reservation_id, amount_millicredits, metadata? } → { charged_millicredits, available_millicredits, ... } */
  commit(request, opts) { return this.call('Commit', request, opts); }

  /** { reservation_id, reason? } → {} */
  release(request, opts) { return this.call('Release', request, opts); }

  /** { user_id, org_id? } → { funding, limit_millicredits, used_millicredits, held_millicredits, available_millicredits } */
  getBalance(request, opts) { return this.call('GetBalance', request, opts); }

  close() { this.stub.close(); }
}

module.exports = {
  CreditAuthorityClient,
  loadCreditPackage,
  errorDetails,
  describeError,
  toStruct,
  PROTO_ROOT,
  grpc,
};
