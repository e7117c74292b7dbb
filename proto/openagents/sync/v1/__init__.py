"""Generated Python code of the openagents.sync.v1 contract (ADR-0002).

``proto/`` is the import root: ``from openagents.sync.v1 import sync_pb2, topics_pb2, errors_pb2``.
pytest puts it on ``sys.path`` via ``pytest.ini`` (``pythonpath``), and the Django settings do the
same for ``manage.py``, daphne and uvicorn. Regenerate with ``scripts/proto-generate.sh``; never
edit the ``*_pb2.py`` files by hand (``scripts/verify-proto-generate.sh`` fails on any drift).
"""
