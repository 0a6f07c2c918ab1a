// One JsSIP phone in headless Chromium registers with handover over WSS
// and calls CALLEE; once the call is confirmed it prints the line
// `confirmed`, waits until the file GO exists (the test kills a worker
// meanwhile), hangs up and waits for the end. Prints one JSON line with
// what it saw; exits 1 on a failure.
//
//   node jssip_caller.mjs WSS_URL DOMAIN CALLEE GO
//
// Needs what jssip_call.mjs needs (scripts/install-deps.sh).
import fs from "node:fs";
import { jssipPage } from "./page.mjs";

const [wss, domain, callee, go] = process.argv.slice(2);
let result;
let close = async () => {};
try {
  const opened = await jssipPage();
  close = opened.close;
  const page = opened.page;
  // Phase one: register, call, wait for the call to be confirmed.
  result = await page.evaluate(async ({ wss, domain, callee }) => {
    const seen = [];
    window.seen = seen;
    const within = (ms, what, p) =>
      Promise.race([p, new Promise((_, no) => setTimeout(() => no(new Error(`no ${what} within ${ms} ms`)), ms))]);
    const ua = new JsSIP.UA({
      sockets: [new JsSIP.WebSocketInterface(wss)],
      uri: `sip:alice@${domain}`,
      register: true,
      session_timers: false,
    });
    window.ua = ua;
    try {
      await within(10000, "registration", new Promise((ok, no) => {
        ua.on("registered", () => { seen.push("registered"); ok(); });
        ua.on("registrationFailed", (e) => no(new Error(`registration failed: ${e.cause}`)));
        ua.start();
      }));
      const s = ua.call(`sip:${callee}@${domain}`, { mediaConstraints: { audio: true, video: false } });
      window.session = s;
      window.ended = new Promise((ok) => {
        s.on("ended", (x) => { seen.push(`ended by ${x.originator}`); ok(); });
        s.on("failed", (x) => { seen.push(`failed: ${x.cause}`); ok(); });
      });
      await within(15000, "answer", new Promise((ok, no) => {
        s.on("accepted", (e) => seen.push(`accepted ${e.response ? e.response.status_code : ""}`.trim()));
        s.on("confirmed", () => { seen.push("confirmed"); ok(); });
        s.on("failed", (e) => no(new Error(`the call failed: ${e.cause}`)));
      }));
      return { ok: true, seen };
    } catch (e) {
      return { ok: false, error: String(e), seen };
    }
  }, { wss, domain, callee });
  if (result.ok) {
    console.log("confirmed");
    const until = Date.now() + 60000;
    while (!fs.existsSync(go) && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 100));
    }
    // Phase two: the call is still up in the browser; hang up.
    result = await page.evaluate(async () => {
      const seen = window.seen;
      const within = (ms, what, p) =>
        Promise.race([p, new Promise((_, no) => setTimeout(() => no(new Error(`no ${what} within ${ms} ms`)), ms))]);
      try {
        if (window.session.isEnded()) {
          return { ok: false, error: "the call ended before the hang-up", seen };
        }
        window.session.terminate();
        await within(10000, "the end of the call", window.ended);
        return { ok: true, seen };
      } catch (e) {
        return { ok: false, error: String(e), seen };
      } finally {
        window.ua.stop();
        await new Promise((r) => setTimeout(r, 500));
      }
    });
  }
} catch (e) {
  result = { ok: false, error: String(e) };
} finally {
  await close();
}
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
