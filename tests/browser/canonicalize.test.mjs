// The /live/ page's canonicalize shim (static/live/canonicalize.js) must produce the canonical JSON
// and hashes of every shared vector, exactly like the server and both clients.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import canonicalize from "../../static/live/canonicalize.js";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const fixture = JSON.parse(readFileSync(join(root, "docs/protocol/fixtures/payload_hash_vectors.v1.json"), "utf8"));

test("every payload hash vector canonicalises and hashes identically", () => {
  const vectors = fixture.vectors.filter((v) => v.canonical_json !== undefined);
  assert.ok(vectors.length >= 10, "the fixture should hold the shared vectors");
  for (const vector of vectors) {
    const text = canonicalize(vector.input);
    assert.equal(text, vector.canonical_json, vector.name);
    const digest = createHash("sha256").update(Buffer.from(text, "utf8")).digest();
    assert.equal(`sha256:${digest.toString("hex")}`, vector.sha256, vector.name);
  }
});

test("non-finite numbers are refused", () => {
  assert.throws(() => canonicalize({ a: Number.NaN }));
  assert.throws(() => canonicalize([Number.POSITIVE_INFINITY]));
});
