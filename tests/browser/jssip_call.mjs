// Two JsSIP phones in one headless Chromium register with handover over
// WSS and call each other: alice calls bob, bob answers, alice hangs up.
// Prints one JSON line with what each phone saw; exits 1 on a failure.
//
//   node jssip_call.mjs WSS_URL DOMAIN
//
// Needs what page.mjs needs (scripts/install-deps.sh).
import { jssipPage } from "./page.mjs";

const [wss, domain] = process.argv.slice(2);
let result;
let close = async () => {};
try {
  const opened = await jssipPage();
  close = opened.close;
  const page = opened.page;
  result = await page.evaluate(async ({ wss, domain }) => {
    const seen = { alice: [], bob: [] };
    const within = (ms, what, p) =>
      Promise.race([p, new Promise((_, no) => setTimeout(() => no(new Error(`no ${what} within ${ms} ms`)), ms))]);
    const phone = (user) => {
      const ua = new JsSIP.UA({
        sockets: [new JsSIP.WebSocketInterface(wss)],
        uri: `sip:${user}@${domain}`,
        register: true,
        session_timers: false,
      });
      const registered = new Promise((ok, no) => {
        ua.on("registered", () => { seen[user].push("registered"); ok(); });
        ua.on("registrationFailed", (e) => no(new Error(`${user}: registration failed: ${e.cause}`)));
      });
      ua.start();
      return { ua, registered };
    };
    const alice = phone("alice"), bob = phone("bob");
    try {
      await within(10000, "registrations", Promise.all([alice.registered, bob.registered]));
      const bobEnded = new Promise((ok) => {
        bob.ua.on("newRTCSession", (e) => {
          if (e.originator !== "remote") return;
          seen.bob.push(`incoming from ${e.request.from.uri.user}`);
          e.session.on("confirmed", () => seen.bob.push("confirmed"));
          e.session.on("ended", (x) => { seen.bob.push(`ended by ${x.originator}`); ok(); });
          e.session.on("failed", (x) => { seen.bob.push(`failed: ${x.cause}`); ok(); });
          e.session.answer({ mediaConstraints: { audio: true, video: false } });
        });
      });
      const s = alice.ua.call(`sip:bob@${domain}`, { mediaConstraints: { audio: true, video: false } });
      await within(10000, "answer", new Promise((ok, no) => {
        s.on("accepted", (e) => seen.alice.push(`accepted ${e.response ? e.response.status_code : ""}`.trim()));
        s.on("confirmed", () => { seen.alice.push("confirmed"); ok(); });
        s.on("failed", (e) => no(new Error(`alice's call failed: ${e.cause}`)));
      }));
      await new Promise((r) => setTimeout(r, 1000));
      const aliceEnded = new Promise((ok) => s.on("ended", (x) => { seen.alice.push(`ended by ${x.originator}`); ok(); }));
      s.terminate();
      await within(10000, "the end of the call at bob", Promise.all([bobEnded, aliceEnded]));
      return { ok: true, seen };
    } catch (e) {
      return { ok: false, error: String(e), seen };
    } finally {
      alice.ua.stop();
      bob.ua.stop();
      await new Promise((r) => setTimeout(r, 500));
    }
  }, { wss, domain });
} catch (e) {
  result = { ok: false, error: String(e) };
} finally {
  await close();
}
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
