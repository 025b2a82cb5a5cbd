import os
from urllib.parse import parse_qs

import jwt
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from hub.groups import group_name

SECRET = os.environ.get("HUB_JWT_SECRET", "")


class HubConsumer(AsyncJsonWebsocketConsumer):
    """/ws?token=…&channels=a,b, then the seed's JSON actions (subscribe, unsubscribe, ping).
    The token is checked (HS256) only when one is given."""

    async def connect(self):
        self.joined = set()
        query = parse_qs(self.scope["query_string"].decode())
        token = query.get("token", [None])[0]
        if token is not None:
            try:
                jwt.decode(token, SECRET, algorithms=["HS256"])
            except jwt.PyJWTError:
                await self.close(code=4003)
                return
        await self.accept()
        for channel in filter(None, query.get("channels", [""])[0].split(",")):
            await self.join(channel)

    async def join(self, channel):
        await self.channel_layer.group_add(group_name(channel), self.channel_name)
        self.joined.add(channel)

    async def receive_json(self, content, **kwargs):
        action = content.get("action")
        if action == "subscribe":
            channel = content.get("channel", "prices")
            await self.join(channel)
            await self.send_json({"type": "subscribed", "channel": channel})
        elif action == "unsubscribe":
            channel = content.get("channel")
            await self.channel_layer.group_discard(group_name(channel), self.channel_name)
            self.joined.discard(channel)
            await self.send_json({"type": "unsubscribed", "channel": channel})
        elif action == "ping":
            await self.send_json({"type": "pong"})

    async def disconnect(self, code):
        for channel in getattr(self, "joined", ()):
            await self.channel_layer.group_discard(group_name(channel), self.channel_name)

    async def hub_message(self, event):
        await self.send_json(event["data"])
