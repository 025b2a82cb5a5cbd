import json

from channels.layers import get_channel_layer
from django.http import JsonResponse

from hub.groups import group_name


async def publish(request):
    body = json.loads(request.body)
    await get_channel_layer().group_send(group_name(body["channel"]), {"type": "hub.message", "data": body["data"]})
    return JsonResponse({"channel": body["channel"]})


async def broadcast(request):
    body = json.loads(request.body)
    layer = get_channel_layer()
    for channel in body["channels"]:
        await layer.group_send(group_name(channel), {"type": "hub.message", "data": body["data"]})
    return JsonResponse({"channels": len(body["channels"])})
