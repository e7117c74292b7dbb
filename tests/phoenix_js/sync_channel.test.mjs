// The official `phoenix` npm client, unmodified, against a real Khala daphne.
//
// `khala_fixture.py` (started below) creates/migrates its own database, starts the server, mints a
// sync token with Khala's issuer and then writes documents through the sink on request. Waits are
// on conditions with deadlines, never bare sleeps. Run: `make test-js` (or, with DATABASE_URL and
// REDIS_URL set: `npm ci --prefix tests/phoenix_js && node --test tests/phoenix_js/`).

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { createInterface } from "node:readline";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { Socket } from "phoenix";
import WebSocket from "ws";

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(here, "..", "..");
const python = process.env.KHALA_PYTHON || join(repoRoot, ".venv", "bin", "python");
const STEP_TIMEOUT_MS = 20_000;

let fixture; // { proc, ready, request(cmd) }
const sockets = [];

function startFixture() {
  const proc = spawn(python, [join(here, "khala_fixture.py")], {
    cwd: repoRoot,
    env: process.env,
    stdio: ["pipe", "pipe", "inherit"],
  });
  const lines = createInterface({ input: proc.stdout });
  const waiting = [];
  const queued = [];
  lines.on("line", (line) => {
    let message;
    try {
      message = JSON.parse(line);
    } catch {
      return; // not ours (a library printing to stdout)
    }
    const next = waiting.shift();
    if (next) next.resolve(message);
    else queued.push(message);
  });
  const exited = new Promise((resolveExit) => proc.on("exit", (code) => resolveExit(code)));
  exited.then((code) => {
    for (const w of waiting.splice(0)) w.reject(new Error(`khala_fixture.py exited with ${code}`));
  });
  const nextLine = () =>
    queued.length
      ? Promise.resolve(queued.shift())
      : withTimeout(new Promise((res, rej) => waiting.push({ resolve: res, reject: rej })), 120_000, "fixture answer");
  return {
    proc,
    exited,
    nextLine,
    async request(command) {
      proc.stdin.write(JSON.stringify(command) + "\n");
      const answer = await nextLine();
      assert.equal(answer.ok, true, `fixture command failed: ${JSON.stringify(answer)}`);
      return answer;
    },
  };
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]);
}

// Resolve when `predicate()` is true; re-checked whenever `notify` is called and on a short poll.
function waitFor(predicate, what, ms = STEP_TIMEOUT_MS) {
  return withTimeout(
    new Promise((res) => {
      const check = () => {
        if (predicate()) {
          clearInterval(interval);
          res();
        }
      };
      const interval = setInterval(check, 10);
      check();
    }),
    ms,
    what,
  );
}

// phoenix's `receive("ok"|"error"|"timeout")` as a promise of {status, response}.
function reply(push) {
  return withTimeout(
    new Promise((res) => {
      push
        .receive("ok", (response) => res({ status: "ok", response }))
        .receive("error", (response) => res({ status: "error", response }))
        .receive("timeout", () => res({ status: "timeout" }));
    }),
    STEP_TIMEOUT_MS,
    "a phx_reply",
  );
}

function connect(token, extra = {}) {
  const socket = new Socket(fixture.ready.socket_url, {
    transport: WebSocket, // Node 20 has no global WebSocket; `ws` is the documented stand-in
    params: { token, client: "phoenix-js-interop", ...extra },
    heartbeatIntervalMs: 500,
    reconnectAfterMs: () => 60_000, // a reconnect would hide a server-side close from the test
  });
  const messages = [];
  socket.onMessage((message) => messages.push(message));
  socket.connect();
  sockets.push(socket);
  return { socket, messages };
}

before(async () => {
  fixture = startFixture();
  const ready = await fixture.nextLine();
  assert.equal(ready.ready, true, `fixture failed to start: ${JSON.stringify(ready)}`);
  fixture.ready = ready;
});

after(async () => {
  for (const socket of sockets) {
    for (const channel of [...socket.channels]) channel.leave(); // also cancels rejoin timers
    socket.disconnect();
  }
  if (fixture) {
    fixture.proc.stdin.end(); // EOF: the fixture stops its server and exits
    const code = await withTimeout(fixture.exited, 30_000, "khala_fixture.py to exit").catch(() => {
      fixture.proc.kill("SIGKILL");
      return "killed";
    });
    assert.equal(code, 0, "khala_fixture.py did not exit cleanly");
  }
});

test("phoenix client joins sync:v1, replays, then receives a live update written after subscribing", async () => {
  const { topic, token, org_id: owner } = fixture.ready;
  const suffix = `${process.pid}-${Date.now()}`;
  // A document committed BEFORE the subscribe: it must come through the replay.
  const before = await fixture.request({
    op: "project",
    doc_key: `js/replayed:${suffix}`,
    doc_version: 1,
    payload: { phase: "before", suffix },
  });

  const { socket, messages } = connect(token);
  const channel = socket.channel("sync:v1", { frames: false });
  const updates = [];
  const batches = [];
  channel.on("sync:update_batch", (payload) => {
    batches.push(payload);
    updates.push(...payload.updates);
  });

  const joined = await reply(channel.join());
  assert.equal(joined.status, "ok", `join failed: ${JSON.stringify(joined)}`);
  assert.match(joined.response.subscription_id, /^sub_/);
  assert.ok(joined.response.allowed_topics.includes(topic));
  assert.deepEqual(joined.response.current_watermarks, []);

  const subscribed = await reply(channel.push("sync:subscribe", { topics: [topic], request_id: "js-1" }));
  assert.equal(subscribed.status, "ok", `subscribe failed: ${JSON.stringify(subscribed)}`);
  assert.deepEqual(subscribed.response.topics, [topic]);
  const [position] = subscribed.response.current_watermarks;
  assert.equal(position.topic, topic);
  assert.ok(position.watermark >= before.watermark);
  // Replay pushes arrive before the reply: the pre-subscribe document is already here.
  const replayed = updates.find((u) => u.doc_key === `js/replayed:${suffix}`);
  assert.ok(replayed, "the document written before subscribing was not replayed");
  assert.equal(replayed.watermark, before.watermark);
  assert.equal(batches.at(-1).replay_complete, true);

  // Live: written after the subscribe reply, through the sink, in another process.
  const payload = { phase: "live", suffix, nested: { list: [1, 2, 3], text: "héllo" } };
  const live = await fixture.request({ op: "project", doc_key: `js/live:${suffix}`, doc_version: 7, payload });
  await waitFor(() => updates.some((u) => u.doc_key === `js/live:${suffix}`), "the live update");
  const update = updates.find((u) => u.doc_key === `js/live:${suffix}`);
  assert.deepEqual(update, {
    topic,
    doc_key: `js/live:${suffix}`,
    doc_version: 7,
    payload,
    payload_hash: live.payload_hash,
    watermark: live.watermark,
    hydration_required: false,
  });
  assert.equal(Buffer.from(update.payload_hash, "base64").length, 32);

  // The same document over HTTP hydration, with the same token: same version, hash and payload.
  const response = await fetch(`${fixture.ready.http_url}/api/sync/v1/doc/${topic}/js/live:${suffix}`, {
    headers: { Authorization: `Bearer ${token}` },
  });
  assert.equal(response.status, 200);
  assert.equal(response.headers.get("cache-control"), "no-store");
  assert.deepEqual(await response.json(), {
    doc_key: `js/live:${suffix}`,
    doc_version: 7,
    payload,
    payload_hash: live.payload_hash,
    watermark: live.watermark,
  });

  // The phoenix client's own socket heartbeats (topic "phoenix") are answered with phx_reply.
  await waitFor(
    () => messages.some((m) => m.topic === "phoenix" && m.event === "phx_reply" && m.payload.status === "ok"),
    "a phx_reply to the phoenix heartbeat",
  );
  assert.equal(socket.isConnected(), true);
  // Ascending, unique watermarks across replay + live.
  const watermarks = updates.map((u) => u.watermark);
  assert.deepEqual(watermarks, [...new Set(watermarks)].sort((a, b) => a - b));
  // Owner filter: a document of another owner, written now, never reaches this socket, while the
  // next own document does (so "not received" is not just "not yet").
  await fixture.request({ op: "project", doc_key: `js/foreign:${suffix}`, doc_version: 1, payload: {}, owner: `${owner}-other` });
  const mine = await fixture.request({ op: "project", doc_key: `js/after:${suffix}`, doc_version: 1, payload: {} });
  await waitFor(() => updates.some((u) => u.watermark === mine.watermark), "the own document after the foreign one");
  assert.equal(updates.some((u) => u.doc_key === `js/foreign:${suffix}`), false, "another owner's document leaked");
});

test("joining any other topic is refused with bad_topic and the socket stays usable", async () => {
  const { socket } = connect(fixture.ready.token);
  const lobby = socket.channel("room:lobby", {});
  const refused = await reply(lobby.join());
  assert.equal(refused.status, "error");
  assert.equal(refused.response.code, "bad_topic");
  lobby.leave();
  const channel = socket.channel("sync:v1", {});
  const joined = await reply(channel.join());
  assert.equal(joined.status, "ok");
});

test("a bad token is refused at join with the verifier's reason", async () => {
  const { socket } = connect("not-a-jwt");
  const channel = socket.channel("sync:v1", {});
  const refused = await reply(channel.join());
  assert.equal(refused.status, "error");
  assert.equal(refused.response.code, "unauthorized");
  assert.equal(refused.response.reason, "invalid_token_format");
});

test("payload_hash is base64 SHA-256 of the canonical JSON (cross-checked in JS for a simple payload)", async () => {
  // Keys already sorted, ASCII only, integers: here RFC 8785 equals JSON.stringify.
  const payload = { a: 1, b: [true, null, "x"], c: { d: 2 } };
  const written = await fixture.request({ op: "project", doc_key: `js/hash:${process.pid}`, doc_version: 1, payload });
  const expected = createHash("sha256").update(JSON.stringify(payload)).digest("base64");
  assert.equal(written.payload_hash, expected);
});
