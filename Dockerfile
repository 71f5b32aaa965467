# callroute: one image for the control plane and the center agents (`callroute controlplane ...`,
# `callroute agent ...`). Build from the repository root: docker build -t callroute:0.1.0 .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml ./
COPY controlplane ./controlplane
COPY agents ./agents
COPY chaos ./chaos
COPY callroute ./callroute
COPY bench ./bench
COPY wire ./wire
COPY devtools ./devtools
RUN pip install . && rm -rf /src

# a fixed uid so the chart's runAsUser/fsGroup (10001) match and state dirs are writable
RUN useradd --system --uid 10001 --home-dir /var/lib/callroute --create-home callroute
USER 10001
WORKDIR /var/lib/callroute

# 7400 control-plane gRPC, 9100 control-plane metrics, 8080 agent HTTP lookups, 8081 agent gRPC
EXPOSE 7400 9100 8080 8081
ENTRYPOINT ["callroute"]
CMD ["--help"]
