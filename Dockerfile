# Stepwise: a slim, non-root image. Configure with STEPWISE_* environment variables.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY stepwise ./stepwise
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    STEPWISE_HOST=0.0.0.0 STEPWISE_PORT=8000 \
    STEPWISE_MIGRATIONS_DIR=/app/migrations \
    STEPWISE_DATABASE_URL=sqlite:////data/stepwise.db
COPY --from=build /install /usr/local
RUN useradd --create-home --uid 10001 stepwise && mkdir -p /data /app && chown stepwise /data
COPY migrations /app/migrations
USER stepwise
WORKDIR /app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
CMD ["stepwise", "serve"]
