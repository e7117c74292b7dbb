"""Operator pages of the tokens app: revoked sessions and the signing keyring (kid and status only).

The keyring page never renders a secret, not even a prefix or a length: an admin screenshot or a
proxied HTML cache must not help anyone forge a token.
"""

from __future__ import annotations

from django.contrib import admin
from django.template.response import TemplateResponse
from django.utils import timezone

from tokens.models import RevokedSession


@admin.register(RevokedSession)
class RevokedSessionAdmin(admin.ModelAdmin):
    list_display = ("kind", "value", "reason", "revoked_at", "expires_at", "active")
    list_filter = ("kind", "reason")
    search_fields = ("value",)
    ordering = ("-revoked_at",)
    readonly_fields = ("kind", "value", "reason", "revoked_at", "expires_at")

    # Revocations are written through tokens.revocation.revoke() (which also notifies the
    # workers); a row typed into a form would skip that notification.
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(boolean=True, description="still in force")
    def active(self, obj):
        return obj.expires_at > timezone.now()


def signing_keys_view(request):
    from tokens import keyring as keyring_module

    keys, error = [], None
    try:
        ring = keyring_module.load_keyring()
    except keyring_module.KeyringMisconfigured as exc:
        # The messages of KeyringMisconfigured name entries by position or kid, never a secret.
        error = str(exc)
    else:
        keys = [
            {"kid": kid, "alg": alg, "status": "current signer" if role == "current" else "verify only"}
            for kid, role, alg in keyring_module.describe(ring)
        ]
    context = {
        **admin.site.each_context(request),
        "title": "Signing keys",
        "keys": keys,
        "error": error,
    }
    return TemplateResponse(request, "admin/khala/signing_keys.html", context)
