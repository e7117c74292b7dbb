"""Storage of the tokens app: session and device revocations.

Revocations live in the database (not process memory) so that every worker sees them; the
``sync.revoked`` channel-layer message is only a hint to close live sockets sooner.
"""

from django.db import models


class RevokedSession(models.Model):
    """A revoked sync session or device, remembered until ``expires_at``.

    ``expires_at`` defaults to revocation time + the longest a token minted earlier can stay valid
    (``TOKEN_TTL_MAX_SECONDS`` + skew), after which the row carries no information and is pruned.
    """

    class Kind(models.TextChoices):
        SESSION = "session"
        DEVICE = "device"

    kind = models.CharField(max_length=8, choices=Kind.choices)
    value = models.CharField(max_length=128)
    reason = models.CharField(max_length=64)
    revoked_at = models.DateTimeField()
    expires_at = models.DateTimeField()

    class Meta:
        db_table = "sync_revoked_sessions"
        constraints = [models.UniqueConstraint(fields=["kind", "value"], name="sync_revoked_kind_value_uniq")]
        indexes = [models.Index(fields=["expires_at"], name="sync_revoked_expires_idx")]

    def __str__(self) -> str:
        return f"{self.kind}:{self.value} ({self.reason})"
