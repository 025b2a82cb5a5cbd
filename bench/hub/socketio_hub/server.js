// socket.io as a hub peer for bench/hub.py: one Node process over HTTPS, a room per channel,
// the Redis adapter (so a second process could share the rooms), and POST /publish and
// /broadcast on the same server. Environment: HUB_PORT, HUB_CERT, HUB_KEY, HUB_REDIS_URL,
// HUB_JWT_SECRET.
"use strict";

const fs = require("fs");
const https = require("https");
const jwt = require("jsonwebtoken");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const secret = process.env.HUB_JWT_SECRET || "";

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", (chunk) => chunks.push(chunk));
    req.on("end", () => resolve(Buffer.concat(chunks).toString()));
    req.on("error", reject);
  });
}

function answer(res, status, body) {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
}

async function main() {
  const server = https.createServer({
    cert: fs.readFileSync(process.env.HUB_CERT),
    key: fs.readFileSync(process.env.HUB_KEY),
    minVersion: "TLSv1.3",
  });
  const pub = createClient({ url: process.env.HUB_REDIS_URL });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  const io = new Server(server, { adapter: createAdapter(pub, sub), transports: ["websocket"] });

  // The token is checked only when one is given, so only the set-up row pays for it.
  io.use((socket, next) => {
    const token = socket.handshake.query.token;
    if (token === undefined) return next();
    try {
      jwt.verify(token, secret, { algorithms: ["HS256"] });
      next();
    } catch (error) {
      next(new Error("invalid token"));
    }
  });
  io.on("connection", (socket) => {
    const channels = socket.handshake.query.channels;
    if (channels) socket.join(String(channels).split(",").filter(Boolean));
    socket.on("subscribe", (channel) => {
      socket.join(String(channel));
      socket.emit("subscribed", channel);
    });
    socket.on("unsubscribe", (channel) => {
      socket.leave(String(channel));
      socket.emit("unsubscribed", channel);
    });
  });

  // socket.io answers its own paths first and hands every other request to these listeners.
  server.on("request", async (req, res) => {
    if (req.url.startsWith("/socket.io")) return;
    try {
      if (req.method === "POST" && req.url === "/publish") {
        const body = JSON.parse(await readBody(req));
        io.to(String(body.channel)).emit("message", body.data);
        return answer(res, 200, { channel: body.channel });
      }
      if (req.method === "POST" && req.url === "/broadcast") {
        const body = JSON.parse(await readBody(req));
        io.to(body.channels.map(String)).emit("message", body.data);
        return answer(res, 200, { channels: body.channels.length });
      }
      answer(res, 404, { error: "not found" });
    } catch (error) {
      answer(res, 400, { error: String(error) });
    }
  });
  server.listen(Number(process.env.HUB_PORT), "127.0.0.1", () => console.log("socket.io hub ready"));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
