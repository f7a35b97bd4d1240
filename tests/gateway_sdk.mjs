// The official OpenCode JS SDK (v2) against the gateway, driven by tests/test_gateway_e2e.py.
// argv[2]: JSON {sdk, url, password, dirs, text, timeout_ms}. Prints one JSON result line.
const args = JSON.parse(process.argv[2]);
const { createOpencodeClient } = await import(args.sdk);
const auth = "Basic " + Buffer.from(`opencode:${args.password}`).toString("base64");

const out = { unauthorized: null, sessions: [] };
const anon = createOpencodeClient({ baseUrl: args.url });
const h = await anon.global.health();
out.unauthorized = h.response ? h.response.status : null;

async function one(dir) {
  const client = createOpencodeClient({ baseUrl: args.url, headers: { Authorization: auth }, directory: dir });
  const created = await client.session.create({});
  if (created.error) throw new Error(`create in ${dir}: ${JSON.stringify(created.error)}`);
  const id = created.data.id;
  const controller = new AbortController();
  const sub = await client.event.subscribe({}, { signal: controller.signal });
  const seen = [];
  let connected;
  const isConnected = new Promise((r) => (connected = r));
  const idle = (async () => {
    for await (const ev of sub.stream) {
      if (ev.type === "server.connected") connected();
      if (ev.properties && ev.properties.sessionID === id) seen.push(ev.type);
      if (args.debug) console.error(dir, JSON.stringify(ev).slice(0, 160));
      const st = ev.properties && ev.properties.status;
      if (ev.properties && ev.properties.sessionID === id && seen.includes("session.status") &&
          (ev.type === "session.idle" || (ev.type === "session.status" && st && st.type === "idle"))) {
        return true;
      }
    }
    return false;
  })();
  await isConnected;
  const prompted = await client.session.promptAsync({ sessionID: id, parts: [{ type: "text", text: args.text }] });
  if (prompted.error) throw new Error(`prompt ${id}: ${JSON.stringify(prompted.error)}`);
  const timer = setTimeout(() => controller.abort(), args.timeout_ms);
  let wentIdle = false;
  try {
    wentIdle = await idle;
  } catch (e) {
    wentIdle = false;
  } finally {
    clearTimeout(timer);
    controller.abort();
  }
  const msgs = await client.session.messages({ sessionID: id });
  const texts = (msgs.data || [])
    .filter((m) => m.info.role === "assistant")
    .flatMap((m) => m.parts.filter((p) => p.type === "text").map((p) => p.text));
  return { dir, id, idle: wentIdle, events: seen.length, messages: (msgs.data || []).length, assistant_text: texts };
}

out.sessions = await Promise.all(args.dirs.map(one));
console.log(JSON.stringify(out));
process.exit(0);
