"""The runtime command HTTP API (token or session auth; users see and change only their own entities).

Another user's run or worker answers 404 ``not_found``, exactly like a missing one, so ids do not
leak. Every error body is ``{"error": {"code", "message", ...}}`` (khala_project.api_errors).
"""

from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from khala_project.api_errors import ApiError
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


def _command_error(exc: commands.CommandError) -> ApiError:
    return ApiError(exc.code, exc.message, exc.http_status)


def _valid(serializer_class, data, **kwargs):
    serializer = serializer_class(data=data, **kwargs)
    serializer.is_valid(raise_exception=True)
    return serializer


class RunListView(APIView):
    def get(self, request):
        runs = Run.objects.filter(owner=request.user).order_by("-created_at")[:LIST_LIMIT]
        return Response({"runs": RunSerializer(runs, many=True).data})

    def post(self, request):
        data = _valid(RunSerializer, request.data).validated_data
        run = commands.create_run(request.user, thread_id=data.get("thread_id", ""))
        return Response(RunSerializer(run).data, status=status.HTTP_201_CREATED)


class RunDetailView(APIView):
    def get(self, request, run_id: str):
        run = Run.objects.filter(id=run_id, owner=request.user).first()
        if run is None:
            raise _not_found("run", run_id)
        return Response(RunSerializer(run).data)


class RunEventsView(APIView):
    def get(self, request, run_id: str):
        run = Run.objects.filter(id=run_id, owner=request.user).first()
        if run is None:
            raise _not_found("run", run_id)
        query = _valid(EventListQuery, request.query_params).validated_data
        events = run.events.filter(seq__gt=query["after_seq"]).order_by("seq")[: query["limit"]]
        return Response({"run_id": run.id, "events": RunEventSerializer(events, many=True).data})

    def post(self, request, run_id: str):
        data = _valid(RunEventSerializer, request.data).validated_data
        try:
            event = commands.append_run_event(run_id, request.user, data["event_type"], data["payload"])
        except Run.DoesNotExist:
            raise _not_found("run", run_id) from None
        except commands.CommandError as exc:
            raise _command_error(exc) from None
        return Response(RunEventSerializer(event).data, status=status.HTTP_201_CREATED)


class WorkerListView(APIView):
    def get(self, request):
        workers = CodexWorker.objects.filter(owner=request.user).order_by("-created_at")[:LIST_LIMIT]
        return Response({"workers": CodexWorkerSerializer(workers, many=True).data})

    def post(self, request):
        data = _valid(CodexWorkerSerializer, request.data).validated_data
        worker = commands.create_codex_worker(request.user, **data)
        return Response(CodexWorkerSerializer(worker).data, status=status.HTTP_201_CREATED)


class WorkerDetailView(APIView):
    def get(self, request, worker_id: str):
        worker = CodexWorker.objects.filter(id=worker_id, owner=request.user).first()
        if worker is None:
            raise _not_found("codex worker", worker_id)
        return Response(CodexWorkerSerializer(worker).data)


class WorkerEventsView(APIView):
    def get(self, request, worker_id: str):
        worker = CodexWorker.objects.filter(id=worker_id, owner=request.user).first()
        if worker is None:
            raise _not_found("codex worker", worker_id)
        query = _valid(EventListQuery, request.query_params).validated_data
        events = worker.events.filter(seq__gt=query["after_seq"]).order_by("seq")[: query["limit"]]
        return Response({"worker_id": worker.id, "events": CodexWorkerEventSerializer(events, many=True).data})

    def post(self, request, worker_id: str):
        data = _valid(CodexWorkerEventSerializer, request.data).validated_data
        try:
            event = commands.append_worker_event(worker_id, request.user, data["event_type"], data["payload"])
        except CodexWorker.DoesNotExist:
            raise _not_found("codex worker", worker_id) from None
        except commands.CommandError as exc:
            raise _command_error(exc) from None
        return Response(CodexWorkerEventSerializer(event).data, status=status.HTTP_201_CREATED)
