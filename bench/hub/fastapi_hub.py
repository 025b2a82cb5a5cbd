"""The seed 000/002 pattern as a hub peer for bench/hub.py: FastAPI on uvicorn with the seed's
ConnectionManager (channel -> set of sockets; a broadcast awaits each socket in turn).

    uvicorn fastapi_hub:app --ws websockets --ssl-keyfile KEY --ssl-certfile CERT

The seed's /ws endpoint reads ?token= and ?channels= and answers the subscribe, unsubscribe and
ping actions, but never adds the socket to the manager; here it does, since a hub that delivers
nothing cannot be measured. The token is checked (HS256, PyJWT) only when one is given, so the
idle and fan-out rows pay no JWT check and the set-up row does. HUB_JWT_SECRET holds the secret.
"""

import json
import os
from typing import Dict, Set

import jwt
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect

app = FastAPI()
SECRET = os.environ.get("HUB_JWT_SECRET", "")


class ConnectionManager:
    def __init__(self):
        self.active_connections: Dict[str, Set[WebSocket]] = {}

    async def connect(self, websocket: WebSocket, channel: str):
        if channel not in self.active_connections:
            self.active_connections[channel] = set()
        self.active_connections[channel].add(websocket)

    def disconnect(self, websocket: WebSocket, channel: str):
        if channel in self.active_connections:
            self.active_connections[channel].discard(websocket)

    async def broadcast(self, message, channel: str):
        if channel in self.active_connections:
            for connection in self.active_connections[channel]:
                try:
                    await connection.send_json(message)
                except Exception as e:
                    print(f"Error broadcasting: {e}")


manager = ConnectionManager()


@app.websocket("/ws")
async def websocket_endpoint(websocket: WebSocket):
    token = websocket.query_params.get("token")
    if token is not None:
        try:
            jwt.decode(token, SECRET, algorithms=["HS256"])
        except jwt.PyJWTError:
            await websocket.close(code=4003, reason="Invalid token")
            return
    await websocket.accept()
    joined = set()
    for channel in filter(None, websocket.query_params.get("channels", "").split(",")):
        await manager.connect(websocket, channel)
        joined.add(channel)
    try:
        while True:
            message = json.loads(await websocket.receive_text())
            action = message.get("action")
            if action == "subscribe":
                channel = message.get("channel", "prices")
                await manager.connect(websocket, channel)
                joined.add(channel)
                await websocket.send_json({"type": "subscribed", "channel": channel})
            elif action == "unsubscribe":
                channel = message.get("channel")
                manager.disconnect(websocket, channel)
                joined.discard(channel)
                await websocket.send_json({"type": "unsubscribed", "channel": channel})
            elif action == "ping":
                await websocket.send_json({"type": "pong"})
    except WebSocketDisconnect:
        pass
    finally:
        for channel in joined:
            manager.disconnect(websocket, channel)


@app.post("/publish")
async def publish(request: Request):
    body = await request.json()
    await manager.broadcast(body["data"], body["channel"])
    return {"channel": body["channel"]}


@app.post("/broadcast")
async def broadcast(request: Request):
    body = await request.json()
    for channel in body["channels"]:
        await manager.broadcast(body["data"], channel)
    return {"channels": len(body["channels"])}
