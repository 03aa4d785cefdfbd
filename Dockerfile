# The MobileSAM web service on CPU.
#
#   docker build -t mobile-sam .
#   docker run --rm -p 8000:8000 -v "$PWD/models:/models:ro" \
#       -e MOBILE_SAM_MODEL=/models/mobile_sam.pt -e MOBILE_SAM_TOKEN=change-me mobile-sam
#
# Settings are environment variables read by `mobile-sam serve` (see docs/deploy.md):
# MOBILE_SAM_MODEL, MOBILE_SAM_PORT, MOBILE_SAM_WORKERS, MOBILE_SAM_MAX_UPLOAD_MB,
# MOBILE_SAM_MAX_PIXELS, MOBILE_SAM_CACHE_MB, MOBILE_SAM_EVERYTHING_TIMEOUT,
# MOBILE_SAM_CORS_ORIGINS, MOBILE_SAM_TOKEN, ...
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# torch first, from the CPU index: the default wheel would pull the CUDA libraries (GBs).
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY src ./src
RUN pip install -c constraints.txt ".[serve]" \
    && rm -rf /src
COPY docker/entrypoint.sh /usr/local/bin/mobile-sam-entrypoint

# A user without a login or a home worth attacking; downloaded weights go to its cache.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin sam \
    && mkdir /models && chown sam /models
USER sam
WORKDIR /home/sam
ENV MOBILE_SAM_HOME=/home/sam/.cache/mobile_sam \
    MOBILE_SAM_MODEL=vit_t \
    MOBILE_SAM_PORT=8000

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MOBILE_SAM_PORT', '8000') + '/health', timeout=4)"]
ENTRYPOINT ["mobile-sam-entrypoint"]
