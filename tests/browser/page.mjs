// What both browser scripts share: headless Chromium (Debian's chromium,
// driven by playwright-core) with a page from http://127.0.0.1 (a secure
// context: getUserMedia works, with fake devices) that has JsSIP loaded.
//
// Needs (scripts/install-deps.sh): Debian's chromium; playwright-core and
// a JsSIP bundle (jssip.js) in $HANDOVER_BROWSER (default
// ~/.cache/handover/browser).
import http from "node:http";
import path from "node:path";
import { createRequire } from "node:module";

// { browser, page, close }: a page with JsSIP; `close` ends both the
// browser and the page's little HTTP server.
export async function jssipPage() {
  const dir = process.env.HANDOVER_BROWSER || path.join(process.env.HOME, ".cache/handover/browser");
  const require = createRequire(path.join(dir, "package.json"));
  const { chromium } = require("playwright-core");
  const server = http.createServer((_, res) => {
    res.writeHead(200, { "content-type": "text/html" });
    res.end("<!doctype html><title>handover</title>");
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
      "--ignore-certificate-errors",
    ],
  });
  const close = async () => {
    await browser.close();
    server.close();
  };
  try {
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    const page = await context.newPage();
    await page.goto(`http://127.0.0.1:${server.address().port}/`);
    await page.addScriptTag({ path: path.join(dir, "jssip.js") });
    return { browser, page, close };
  } catch (e) {
    await close();
    throw e;
  }
}
