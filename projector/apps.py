from django.apps import AppConfig


class ProjectorConfig(AppConfig):
    name = "projector"
    default_auto_field = "django.db.models.BigAutoField"
