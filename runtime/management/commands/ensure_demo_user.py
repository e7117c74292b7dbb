"""Create (or reuse) the demo user and print its API token, so `make run` is usable at once."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token


def ensure_demo_user(username: str, password: str):
    """Return ``(user, token, created)``; idempotent."""
    user_model = get_user_model()
    user, created = user_model.objects.get_or_create(
        username=username, defaults={"is_staff": True, "is_superuser": True}
    )
    if created:
        user.set_password(password)
        user.save(update_fields=["password"])
    token, _ = Token.objects.get_or_create(user=user)
    return user, token, created


class Command(BaseCommand):
    help = "Ensure a demo superuser exists and print its API token (for local use only)."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="demo", help="Demo user name (default: demo).")
        parser.add_argument(
            "--password", default="demo-password", help="Password set when the user is created."
        )
        parser.add_argument(
            "--url", default="http://127.0.0.1:8000", help="Server URL shown in the printed example (make run passes HOST/PORT)."
        )

    def handle(self, *args, username, password, url, **options):
        user, token, created = ensure_demo_user(username, password)
        verb = "created" if created else "exists"
        self.stdout.write(f"demo user {user.username!r} {verb} (admin login: {username} / {password if created else '<unchanged>'})")
        self.stdout.write(f"API token: {token.key}")
        # Name the topics: without scopes the token carries only the server's default scope.
        self.stdout.write(
            "mint a sync token: curl -s -X POST -H 'Authorization: Token "
            f"{token.key}' -H 'Content-Type: application/json' -d '{{\"scopes\": [\"runtime.run_summaries\"]}}' "
            f"{url.rstrip('/')}/api/sync/token"
        )
