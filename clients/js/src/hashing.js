// Payload hashing, identical to the server's projector/payload_hash.py and the Python client:
// RFC 8785 canonical JSON (the `canonicalize` package) → UTF-8 → SHA-256 (WebCrypto, present in
// browsers and in Node ≥ 20). The wire form is standard base64; text form `sha256:<hex>`.
// Values the server refuses are refused here with the same stable codes, checked before
// canonicalising: non_finite_number, unsafe_integer, invalid_unicode, not_json.
import canonicalize from 'canonicalize';

const SAFE_INT = Number.MAX_SAFE_INTEGER;

export class PayloadHashError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'PayloadHashError';
    this.code = code;
  }
}

function isWellFormed(s) {
  if (typeof s.isWellFormed === 'function') return s.isWellFormed();
  return !/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(s);
}

function isPlainObject(v) {
  if (typeof v !== 'object') return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

function check(value) {
  const stack = [value];
  while (stack.length) {
    const v = stack.pop();
    if (v === null || typeof v === 'boolean') continue;
    if (typeof v === 'number') {
      if (!Number.isFinite(v)) throw new PayloadHashError('non_finite_number', `non-finite number ${v}: JSON has no NaN/Infinity`);
      // Doubles in (2**53-1, 1e21) print as plain digits that read back as an unsafe integer.
      if (Math.abs(v) > SAFE_INT && Math.abs(v) < 1e21) {
        throw new PayloadHashError('unsafe_integer', `number ${v} is outside ±(2**53-1): send it as a string`);
      }
    } else if (typeof v === 'string') {
      if (!isWellFormed(v)) throw new PayloadHashError('invalid_unicode', 'string holds a lone surrogate');
    } else if (Array.isArray(v)) {
      stack.push(...v);
    } else if (isPlainObject(v)) {
      for (const [k, child] of Object.entries(v)) {
        if (!isWellFormed(k)) throw new PayloadHashError('invalid_unicode', 'object key holds a lone surrogate');
        stack.push(child);
      }
    } else {
      throw new PayloadHashError('not_json', `not a JSON value: ${typeof v}`);
    }
  }
}

/** RFC 8785 canonical JSON text of `payload`. */
export function canonicalJson(payload) {
  check(payload);
  try {
    return canonicalize(payload);
  } catch (err) {
    throw new PayloadHashError('not_json', `payload is not canonicalisable JSON: ${err.message}`);
  }
}

function subtle() {
  const c = globalThis.crypto;
  if (!c || !c.subtle) throw new Error('WebCrypto (crypto.subtle) is required: browsers and Node >= 20 have it');
  return c.subtle;
}

/** Raw 32-byte SHA-256 of the canonical form. */
export async function payloadHash(payload) {
  const bytes = new TextEncoder().encode(canonicalJson(payload));
  return new Uint8Array(await subtle().digest('SHA-256', bytes));
}

export function toWire(digest) {
  let binary = '';
  for (const b of digest) binary += String.fromCharCode(b);
  return btoa(binary);
}

export function toText(digest) {
  return `sha256:${Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('')}`;
}

/** True when `wireHash` (base64) is the hash of `payload`; a missing or invalid hash is false. */
export async function verify(payload, wireHash) {
  if (typeof wireHash !== 'string') return false;
  try {
    return toWire(await payloadHash(payload)) === wireHash;
  } catch (err) {
    if (err instanceof PayloadHashError) return false;
    throw err;
  }
}
