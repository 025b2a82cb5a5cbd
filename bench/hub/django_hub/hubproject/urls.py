from django.urls import path

from hub import views

urlpatterns = [
    path("publish", views.publish),
    path("broadcast", views.broadcast),
]
