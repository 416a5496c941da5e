# Slim, non-root image of the OCPP site controller.
#
# Stage 1 installs the package and its dependencies into /install; stage 2 is a clean
# python:3.11-slim with only that tree copied in (no pip cache, no build files).
# tests/test_docs_and_packaging.py runs these same steps in a fresh virtual environment.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY policies ./policies
COPY config ./config
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /data ocpp && mkdir -p /data && chown ocpp /data
COPY --from=build /install /usr/local
COPY config/examples /etc/ocpp-lc/examples
# Configuration: OCPP_LC_<SECTION>__<KEY> variables (they win over the file), or a TOML
# file mounted at /etc/ocpp-lc/site.toml and run with: serve --config /etc/ocpp-lc/site.toml
ENV OCPP_LC_STORE__PATH=/data/ocpp-lc.sqlite3 \
    OCPP_LC_LISTEN__HOST=0.0.0.0 \
    OCPP_LC_LOG__FORMAT=json \
    PYTHONUNBUFFERED=1
USER ocpp
WORKDIR /data
# The SQLite store (with its -wal and -shm files): keep it on a volume.
VOLUME ["/data"]
# 9000: chargers; 9200: admin (health, API, metrics; loopback unless OCPP_LC_ADMIN__HOST
# is set, and then OCPP_LC_ADMIN__TOKEN is required)
EXPOSE 9000 9200
# SIGTERM: stop accepting, close the chargers (1001) and their uplinks, commit, close the
# store. Give it a stop grace period of 15 s (docker stop -t 15, compose stop_grace_period).
STOPSIGNAL SIGTERM
# Ready: the store is open and the charger port listens (/readyz is never behind a token).
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import os,sys,urllib.request; p=os.environ.get('OCPP_LC_ADMIN__PORT','9200'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{p}/readyz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["ocpp-lc"]
CMD ["serve"]
