// Starts a REAL Khala server for the integration tests through test/support/khala_server.py
// (the repo's Python harness: its own database, migrated; a daphne process) and talks to it.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const REPO = fileURLToPath(new URL('../../../../', import.meta.url));
const DRIVER = fileURLToPath(new URL('./khala_server.py', import.meta.url));

function python() {
  if (process.env.KHALA_PYTHON) return process.env.KHALA_PYTHON;
  const venv = `${REPO}.venv/bin/python`;
  return existsSync(venv) ? venv : 'python3';
}

// `channelPrefix`: the server's Redis key space (the driver appends `_js`); a test whose limiter
// counters must not meet another run's passes its own.
export async function startKhala({ settings = {}, channelPrefix } = {}) {
  const child = spawn(python(), [DRIVER], {
    cwd: REPO,
    env: {
      ...process.env, KHALA_JS_SERVER_SETTINGS: JSON.stringify(settings),
      ...(channelPrefix ? { KHALA_CHANNEL_PREFIX: channelPrefix } : {}),
    },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const lines = createInterface({ input: child.stdout });
  const waiting = [];
  lines.on('line', (line) => waiting.shift()?.(line));
  const exited = new Promise((resolve) => child.on('exit', (code) => {
    for (const w of waiting.splice(0)) w(JSON.stringify({ ok: false, error: `driver exited with ${code}` }));
    resolve(code);
  }));
  const nextLine = () => new Promise((resolve) => waiting.push(resolve));
  const hello = JSON.parse(await nextLine());
  if (!hello.url) throw new Error(`server driver failed: ${JSON.stringify(hello)}`);
  let queue = Promise.resolve();
  const call = (cmd) => {
    const result = queue.then(async () => {
      const reply = nextLine();
      child.stdin.write(`${JSON.stringify(cmd)}\n`);
      const parsed = JSON.parse(await reply);
      if (!parsed.ok) throw new Error(`driver: ${parsed.error}\n${parsed.trace ?? ''}`);
      return parsed.result;
    });
    queue = result.catch(() => {});
    return result;
  };
  return {
    ...hello,
    call,
    writeMany: (writes) => call({ op: 'write_many', writes }),
    readModels: (topic) => call({ op: 'read_models', topic }),
    head: (topic) => call({ op: 'head', topic }),
    topicPolicy: (topic, fields) => call({ op: 'topic_policy', topic, fields }),
    restart: () => call({ op: 'restart' }),
    async stop() {
      child.stdin.end();
      const timer = setTimeout(() => child.kill('SIGKILL'), 15000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** Poll an (async) predicate until truthy; never a bare sleep to wait for an event. */
export async function waitUntil(predicate, { timeoutMs = 30000, intervalMs = 20, message = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${message}`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}
