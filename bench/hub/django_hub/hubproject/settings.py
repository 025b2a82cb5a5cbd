"""Settings of the seed 004 pattern as a hub peer: Django Channels with channels_redis, served by
daphne. bench/hub.py sets HUB_REDIS_URL (its own redis-server on a loopback port) and
HUB_JWT_SECRET."""

import os

SECRET_KEY = "tlsgate-bench-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "channels",
    "hub",
]
# No middleware: the publish view is a backend API, and nothing here has sessions or forms.
MIDDLEWARE = []
ROOT_URLCONF = "hubproject.urls"
ASGI_APPLICATION = "hubproject.asgi.application"
# AuthMiddlewareStack needs the auth apps; with no session cookie it never opens the database.
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
USE_TZ = True
LOGGING = {"version": 1, "disable_existing_loggers": False,
           "root": {"level": "ERROR", "handlers": []}}

# As seed 004's production.py has it.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [os.environ.get("HUB_REDIS_URL", "redis://127.0.0.1:6379") + "/1"],
            "capacity": 1500,
            "expiry": 60,
            "group_expiry": 300,
        },
    }
}
