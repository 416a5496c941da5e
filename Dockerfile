# Slim, non-root image of the OCPP site controller.
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
ENV OCPP_LC_STORE__PATH=/data/ocpp-lc.sqlite3 \
    OCPP_LC_LISTEN__HOST=0.0.0.0 \
    OCPP_LC_LOG__FORMAT=json \
    PYTHONUNBUFFERED=1
USER ocpp
WORKDIR /data
VOLUME ["/data"]
# 9000: chargers; 9200: admin (health, API, metrics; loopback unless OCPP_LC_ADMIN__HOST is set)
EXPOSE 9000 9200
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import os,sys,urllib.request; p=os.environ.get('OCPP_LC_ADMIN__PORT','9200'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{p}/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["ocpp-lc"]
CMD ["serve"]
