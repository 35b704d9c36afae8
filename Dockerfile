# Sluicegate container image.
#   docker build -t sluicegate .
#   docker run -p 8080:8080 -p 9901:9901 -v "$PWD/sluicegate.yaml:/etc/sluicegate/sluicegate.yaml:ro" sluicegate
# The mounted config must listen on 0.0.0.0 (listen: 0.0.0.0:8080, admin_listen: 0.0.0.0:9901).

# ---- build: compile the Cython core into a wheel (the full image carries gcc) ----
FROM python:3.11-bookworm AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY proxy ./proxy
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# ---- runtime: slim, non-root ----
FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 sluicegate && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin sluicegate
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels /wheels/sluicegate-*.whl && rm -rf /wheels
COPY config/docker.yaml /etc/sluicegate/sluicegate.yaml
USER 10001:10001
EXPOSE 8080 9901
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9901/health', timeout=2)"]
ENTRYPOINT ["sluicegate"]
CMD ["run", "--config", "/etc/sluicegate/sluicegate.yaml"]
