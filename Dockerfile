# The service's image: gunicorn with the production settings, run as a user of
# its own. Two stages: the first compiles mysqlclient (gcc, the MariaDB client's
# headers) into a virtualenv; the image itself gets that virtualenv and only the
# client library it links against, no compiler.
FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc pkg-config default-libmysqlclient-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /venv
COPY requirements/base.lock /tmp/base.lock
RUN /venv/bin/pip install --no-cache-dir -r /tmp/base.lock

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/venv/bin:$PATH \
    DJANGO_SETTINGS_MODULE=config.settings.production BIND=0.0.0.0:8000
RUN apt-get update \
    && apt-get install -y --no-install-recommends libmariadb3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home --shell /usr/sbin/nologin usersvc
COPY --from=build /venv /venv
WORKDIR /app
COPY . .
# The static files and their manifest, without which the service refuses to start.
# The production settings refuse a weak key even here: a random one, used once.
RUN SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(50))')" \
    python manage.py collectstatic --no-input -v0
# The commit usersvc_build_info names (the image has no .git), declared late so
# that a new commit rebuilds nothing above: --build-arg BUILD_COMMIT=$(git rev-parse HEAD)
ARG BUILD_COMMIT=unknown
ENV BUILD_COMMIT=$BUILD_COMMIT

USER usersvc
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
# gunicorn reads /app/gunicorn.conf.py by itself. Migrations are not run here:
# they run once, before the service starts (docker-compose.yml's migrate service).
CMD ["gunicorn", "config.wsgi"]
