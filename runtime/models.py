"""The reference authority: runs with ordered run events, codex workers with ordered worker events.

This app is the *truth* that the projector folds into sync documents. It knows nothing about
watermarks or sockets. Every entity belongs to one user; its sync owner is ``user:<owner_id>``
(the string sync tokens carry in ``oa_org_id``).

``seq`` is per entity and gap-free: ``runtime.commands`` allocates it under a row lock on the
parent (``SELECT … FOR UPDATE``) and the (parent, seq) unique constraint backs that up.
"""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone


def new_run_id() -> str:
    return f"run_{uuid.uuid4().hex}"


def new_worker_id() -> str:
    return f"cw_{uuid.uuid4().hex}"


def owner_string(user_id: int) -> str:
    """The sync owner (``oa_org_id``) of an entity owned by ``user_id``."""
    return f"user:{user_id}"


class RunStatus(models.TextChoices):
    CREATED = "created"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"


TERMINAL_RUN_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED})


class Run(models.Model):
    id = models.CharField(max_length=64, primary_key=True, default=new_run_id, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="runtime_runs")
    thread_id = models.CharField(max_length=128, blank=True, default="")
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.CREATED)
    latest_seq = models.BigIntegerField(default=0)
    terminal_reason_class = models.CharField(max_length=64, blank=True, default="")
    terminal_reason = models.TextField(blank=True, default="")
    terminal_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_default=Now())
    updated_at = models.DateTimeField(auto_now=True, db_default=Now())

    class Meta:
        db_table = "runtime_runs"
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "created_at"], name="runtime_runs_owner_created_idx")]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_RUN_STATUSES


class RunEvent(models.Model):
    id = models.BigAutoField(primary_key=True)
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="events")
    seq = models.BigIntegerField()
    event_type = models.CharField(max_length=64)
    payload = models.JSONField(default=dict)
    # Set by the command (injectable clock), not by auto_now_add.
    created_at = models.DateTimeField(default=timezone.now, db_default=Now())

    class Meta:
        db_table = "runtime_run_events"
        ordering = ["run", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["run", "seq"], name="runtime_run_events_run_seq_uniq"),
            models.CheckConstraint(condition=Q(seq__gte=1), name="runtime_run_events_seq_gte_1"),
        ]

    def __str__(self) -> str:
        return f"{self.run_id}#{self.seq} {self.event_type}"


class WorkerStatus(models.TextChoices):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class CodexWorker(models.Model):
    id = models.CharField(max_length=64, primary_key=True, default=new_worker_id, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="runtime_codex_workers"
    )
    status = models.CharField(max_length=16, choices=WorkerStatus.choices, default=WorkerStatus.STARTING)
    workspace_ref = models.CharField(max_length=255, blank=True, default="")
    codex_home_ref = models.CharField(max_length=255, blank=True, default="")
    adapter = models.CharField(max_length=64, blank=True, default="")
    metadata = models.JSONField(default=dict, blank=True)
    latest_seq = models.BigIntegerField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_default=Now())
    updated_at = models.DateTimeField(auto_now=True, db_default=Now())

    class Meta:
        db_table = "runtime_codex_workers"
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "created_at"], name="runtime_cw_owner_created_idx")]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"


class CodexWorkerEvent(models.Model):
    id = models.BigAutoField(primary_key=True)
    worker = models.ForeignKey(CodexWorker, on_delete=models.CASCADE, related_name="events")
    seq = models.BigIntegerField()
    event_type = models.CharField(max_length=64)
    payload = models.JSONField(default=dict)
    # Set by the command (injectable clock), not by auto_now_add.
    created_at = models.DateTimeField(default=timezone.now, db_default=Now())

    class Meta:
        db_table = "runtime_codex_worker_events"
        ordering = ["worker", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["worker", "seq"], name="runtime_cw_events_worker_seq_uniq"),
            models.CheckConstraint(condition=Q(seq__gte=1), name="runtime_cw_events_seq_gte_1"),
        ]

    def __str__(self) -> str:
        return f"{self.worker_id}#{self.seq} {self.event_type}"
