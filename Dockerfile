# The one image of every runrelay process; the command picks which (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY runrelay ./runrelay
COPY api ./api
COPY workers ./workers
COPY shared ./shared
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /app runrelay

USER runrelay
EXPOSE 8000
# SIGTERM is what `docker stop` sends: the API closes streams at an event boundary and
# a worker drains for RUNRELAY_SHUTDOWN_GRACE_S (give it a stop_grace_period above that).
STOPSIGNAL SIGTERM
CMD ["runrelay", "api", "--host", "0.0.0.0", "--port", "8000"]
