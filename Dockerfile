# Khala server image: pinned runtime requirements, daphne on 0.0.0.0:8000, non-root.
#
# NOTE: this machine has no Docker engine, so this file has never been built here; it was written
# to be boring (one stage, the same pinned requirements `make run` installs) and reviewed by eye.
# Build and run:  docker build -t khala .  &&  docker run -p 8000:8000 -e DATABASE_URL=… -e REDIS_URL=… khala
# Several workers behind one port: docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KHALA_VAR_DIR=/app/var

WORKDIR /app

# Dependencies first, so code changes do not reinstall them. Only base.txt: the image runs Khala,
# it does not test it (psycopg[binary] and the uvicorn extras ship manylinux wheels: no compiler).
COPY requirements/base.txt requirements/base.txt
RUN pip install -r requirements/base.txt

COPY . .

# A system user without a login shell owns nothing but var/ (the embedded SQLite default, unused
# when DATABASE_URL is set).
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin khala \
    && mkdir -p /app/var \
    && chown khala /app/var
USER khala

EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]

# Migrations are a separate step (`python manage.py migrate`), run once per release, not by every
# worker at start (see docker-compose.yml's `migrate` service).
# The one server entry (khala_project/serve.py): it sets the WebSocket limits the protocol documents.
# KHALA_SERVER=uvicorn selects uvicorn instead of daphne.
CMD ["python", "-m", "khala_project.serve", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]
