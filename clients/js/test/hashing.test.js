// Hash parity over the shared fixture (docs/protocol/fixtures/payload_hash_vectors.v1.json): the
// same vectors are checked by the server's and the Python client's suites.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { PayloadHashError, canonicalJson, payloadHash, toText, toWire, verify } from '../src/index.js';

const fixture = JSON.parse(readFileSync(fileURLToPath(new URL('../../../docs/protocol/fixtures/payload_hash_vectors.v1.json', import.meta.url)), 'utf8'));

// input_json may spell NaN/Infinity or lone surrogates, which JSON.parse cannot give us: read it
// as a JavaScript literal (test data from the repo, not from the network).
const inputOf = (v) => ('input' in v ? v.input : Function(`"use strict"; return (${v.input_json});`)());

test('fixture has vectors', () => {
  assert.equal(fixture.version, 'khala.payload_hash.v1');
  assert.ok(fixture.vectors.filter((v) => !v.error).length >= 12);
});

for (const vector of fixture.vectors.filter((v) => !v.error)) {
  test(`hashes ${vector.name} like the server`, async () => {
    const value = inputOf(vector);
    assert.equal(canonicalJson(value), vector.canonical_json);
    const digest = await payloadHash(value);
    assert.equal(toText(digest), vector.sha256);
    assert.equal(toWire(digest), vector.base64);
    assert.equal(await verify(value, vector.base64), true);
  });
}

for (const vector of fixture.vectors.filter((v) => v.error)) {
  // An integer above 2**53 cannot even be held exactly by a JS number; JSON.parse rounds it to a
  // double that still lies outside the safe range, which is refused the same way.
  test(`refuses ${vector.name} with ${vector.error}`, async () => {
    const value = inputOf(vector);
    await assert.rejects(payloadHash(value), (err) => err instanceof PayloadHashError && err.code === vector.error);
    assert.equal(await verify(value, 'AAAA'), false);
  });
}

test('verify rejects tampering and missing hashes', async () => {
  const wire = toWire(await payloadHash({ a: 1 }));
  assert.equal(await verify({ a: 1 }, wire), true);
  assert.equal(await verify({ a: 2 }, wire), false);
  assert.equal(await verify({ a: 1 }, null), false);
  await assert.rejects(payloadHash({ f: () => 1 }), (err) => err.code === 'not_json');
  await assert.rejects(payloadHash(undefined), (err) => err.code === 'not_json');
});
