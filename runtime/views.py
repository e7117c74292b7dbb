"""The runtime command HTTP API (token or session auth; users see and change only their own entities).

Another user's run or worker answers 404 ``not_found``, exactly like a missing one, so ids do not
leak. Every error body is ``{"error": {"code", "message", ...}}`` (khala_project.api_errors).
"""

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from khala_project.api_errors import ApiError
from khala_project.openapi import responses
from runtime import commands
from runtime.models import CodexWorker, Run
from runtime.serializers import (
    CodexWorkerEventSerializer,
    CodexWorkerSerializer,
    EventListQuery,
    RunEventSerializer,
    RunSerializer,
)

LIST_LIMIT = 100


def _not_found(kind: str, entity_id: str) -> ApiError:
    return ApiError("not_found", f"{kind} {entity_id} not found", status.HTTP_404_NOT_FOUND)


def _valid(serializer_class, data, **kwargs):
    serializer = serializer_class(data=data, **kwargs)
    serializer.is_valid(raise_exception=True)
    return serializer


def _owned(model, kind: str, entity_id: str, user):
    """``user``'s run or worker; 404 ``not_found`` for a missing one and for another user's alike."""
    entity = model.objects.filter(id=entity_id, owner=user).first()
    if entity is None:
        raise _not_found(kind, entity_id)
    return entity


def _event_page(entity, query_params, serializer_class):
    """The serialized events of ``entity`` after ``after_seq``, in seq order, at most ``limit``."""
    query = _valid(EventListQuery, query_params).validated_data
    events = entity.events.filter(seq__gt=query["after_seq"]).order_by("seq")[: query["limit"]]
    return serializer_class(events, many=True).data


def _append_event(append, model, kind: str, entity_id: str, request, serializer_class) -> Response:
    """Validate the body, append through the runtime command ``append``, answer 201 with the event."""
    data = _valid(serializer_class, request.data).validated_data
    try:
        event = append(entity_id, request.user, data["event_type"], data["payload"])
    except model.DoesNotExist:
        raise _not_found(kind, entity_id) from None
    except commands.CommandError as exc:
        raise ApiError.from_coded(exc) from None
    return Response(serializer_class(event).data, status=status.HTTP_201_CREATED)


def _listing(name: str, key: str, serializer_class):
    return inline_serializer(name, {key: serializer_class(many=True)})


def _events(name: str, id_field: str, serializer_class):
    return inline_serializer(name, {id_field: serializers.CharField(), "events": serializer_class(many=True)})


EVENT_PAGE_PARAMETERS = [
    OpenApiParameter("after_seq", int, description="events after this seq (default 0)"),
    OpenApiParameter("limit", int, description="at most this many (1-500, default 100)"),
]


class RunListView(APIView):
    @extend_schema(operation_id="runs_list", responses=responses(200, _listing("RunList", "runs", RunSerializer), "your latest runs"))
    def get(self, request):
        runs = Run.objects.filter(owner=request.user).order_by("-created_at")[:LIST_LIMIT]
        return Response({"runs": RunSerializer(runs, many=True).data})

    @extend_schema(operation_id="runs_create", request=RunSerializer, responses=responses(201, RunSerializer, "the new run"))
    def post(self, request):
        data = _valid(RunSerializer, request.data).validated_data
        run = commands.create_run(request.user, thread_id=data.get("thread_id", ""))
        return Response(RunSerializer(run).data, status=status.HTTP_201_CREATED)


class RunDetailView(APIView):
    @extend_schema(operation_id="runs_get", responses=responses(200, RunSerializer))
    def get(self, request, run_id: str):
        return Response(RunSerializer(_owned(Run, "run", run_id, request.user)).data)


class RunEventsView(APIView):
    @extend_schema(
        operation_id="run_events_list", parameters=EVENT_PAGE_PARAMETERS,
        responses=responses(200, _events("RunEventPage", "run_id", RunEventSerializer)),
    )
    def get(self, request, run_id: str):
        run = _owned(Run, "run", run_id, request.user)
        events = _event_page(run, request.query_params, RunEventSerializer)
        return Response({"run_id": run.id, "events": events})

    @extend_schema(operation_id="run_events_append", request=RunEventSerializer, responses=responses(201, RunEventSerializer))
    def post(self, request, run_id: str):
        return _append_event(commands.append_run_event, Run, "run", run_id, request, RunEventSerializer)


class WorkerListView(APIView):
    @extend_schema(
        operation_id="codex_workers_list",
        responses=responses(200, _listing("CodexWorkerList", "workers", CodexWorkerSerializer), "your latest workers"),
    )
    def get(self, request):
        workers = CodexWorker.objects.filter(owner=request.user).order_by("-created_at")[:LIST_LIMIT]
        return Response({"workers": CodexWorkerSerializer(workers, many=True).data})

    @extend_schema(operation_id="codex_workers_create", request=CodexWorkerSerializer, responses=responses(201, CodexWorkerSerializer))
    def post(self, request):
        data = _valid(CodexWorkerSerializer, request.data).validated_data
        worker = commands.create_codex_worker(request.user, **data)
        return Response(CodexWorkerSerializer(worker).data, status=status.HTTP_201_CREATED)


class WorkerDetailView(APIView):
    @extend_schema(operation_id="codex_workers_get", responses=responses(200, CodexWorkerSerializer))
    def get(self, request, worker_id: str):
        return Response(CodexWorkerSerializer(_owned(CodexWorker, "codex worker", worker_id, request.user)).data)


class WorkerEventsView(APIView):
    @extend_schema(
        operation_id="codex_worker_events_list", parameters=EVENT_PAGE_PARAMETERS,
        responses=responses(200, _events("CodexWorkerEventPage", "worker_id", CodexWorkerEventSerializer)),
    )
    def get(self, request, worker_id: str):
        worker = _owned(CodexWorker, "codex worker", worker_id, request.user)
        events = _event_page(worker, request.query_params, CodexWorkerEventSerializer)
        return Response({"worker_id": worker.id, "events": events})

    @extend_schema(
        operation_id="codex_worker_events_append", request=CodexWorkerEventSerializer,
        responses=responses(201, CodexWorkerEventSerializer),
    )
    def post(self, request, worker_id: str):
        return _append_event(
            commands.append_worker_event, CodexWorker, "codex worker", worker_id, request, CodexWorkerEventSerializer
        )
