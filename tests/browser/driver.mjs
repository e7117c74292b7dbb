// A headless Chromium driven over stdin/stdout, one JSON command per line, for the pytest browser
// suite (tests/browser/test_*.py owns the servers, the data and the assertions; this file only
// drives the browser). Every reply is one JSON line: {"ok": true, ...} or {"ok": false, "error"}.
//
// Chromium is Debian's /usr/bin/chromium (override: KHALA_CHROMIUM); playwright-core downloads no
// browser. Each driver runs with a fresh profile directory, removed on exit.
//
// Commands:
//   {"cmd": "goto", "url"}                                  -> {"ok", "status", "url"}
//   {"cmd": "login", "url", "username", "password"}         admin login form, then wait for the redirect
//   {"cmd": "wait_text", "selector", "text", "timeout_ms"}  -> {"ok", "elapsed_ms"} when the text is inside
//   {"cmd": "wait_attr", "selector", "attr", "value", "timeout_ms"}
//   {"cmd": "text", "selector"}                             -> {"ok", "text"}
//   {"cmd": "viewport", "width", "height"}
//   {"cmd": "screenshot", "path", "full_page"}
//   {"cmd": "console"}                                      -> {"ok", "messages"} (page console + errors)
//   {"cmd": "close"}

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

import { chromium } from "playwright-core";

const profile = mkdtempSync(join(tmpdir(), "khala-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.KHALA_CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1280, height: 800 },
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const page = context.pages()[0] || (await context.newPage());
const consoleMessages = [];
page.on("console", (message) => consoleMessages.push(`${message.type()}: ${message.text()}`));
page.on("pageerror", (error) => consoleMessages.push(`pageerror: ${error.message}`));

function reply(payload) {
  process.stdout.write(JSON.stringify(payload) + "\n");
}

async function shutdown(code) {
  try {
    await context.close();
  } finally {
    rmSync(profile, { recursive: true, force: true });
    process.exit(code);
  }
}

const handlers = {
  async goto({ url }) {
    const response = await page.goto(url, { waitUntil: "domcontentloaded" });
    return { status: response ? response.status() : null, url: page.url() };
  },
  async login({ url, username, password }) {
    await page.goto(url, { waitUntil: "domcontentloaded" });
    await page.fill("#id_username", username);
    await page.fill("#id_password", password);
    await Promise.all([page.waitForNavigation({ waitUntil: "domcontentloaded" }), page.click("input[type=submit]")]);
    return { url: page.url() };
  },
  async wait_text({ selector, text, timeout_ms }) {
    const started = Date.now();
    await page.waitForFunction(
      ([sel, needle]) => {
        const el = document.querySelector(sel);
        return el !== null && el.textContent.includes(needle);
      },
      [selector, text],
      { timeout: timeout_ms, polling: 50 },
    );
    return { elapsed_ms: Date.now() - started };
  },
  async wait_attr({ selector, attr, value, timeout_ms }) {
    const started = Date.now();
    await page.waitForFunction(
      ([sel, name, expected]) => {
        const el = document.querySelector(sel);
        return el !== null && el.getAttribute(name) === expected;
      },
      [selector, attr, value],
      { timeout: timeout_ms, polling: 50 },
    );
    return { elapsed_ms: Date.now() - started };
  },
  async viewport({ width, height }) {
    await page.setViewportSize({ width, height });
    return {};
  },
  async text({ selector }) {
    return { text: await page.textContent(selector) };
  },
  async screenshot({ path, full_page }) {
    await page.screenshot({ path, fullPage: Boolean(full_page) });
    return { path };
  },
  async console() {
    return { messages: consoleMessages.slice() };
  },
};

reply({ ok: true, ready: true, chromium: context.browser() ? context.browser().version() : "persistent" });

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let command;
  try {
    command = JSON.parse(line);
  } catch (error) {
    reply({ ok: false, error: `not JSON: ${error.message}` });
    continue;
  }
  if (command.cmd === "close") {
    reply({ ok: true });
    await shutdown(0);
  }
  const handler = handlers[command.cmd];
  if (!handler) {
    reply({ ok: false, error: `unknown command ${command.cmd}` });
    continue;
  }
  try {
    reply({ ok: true, ...(await handler(command)) });
  } catch (error) {
    reply({ ok: false, error: String(error && error.message ? error.message : error) });
  }
}
await shutdown(0);
