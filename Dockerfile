# One image for every defectloop process; docker-compose.yml picks the command.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY defectloop ./defectloop
COPY workers ./workers
COPY labelling ./labelling
COPY models ./models
COPY db ./db
# torch==2.14.1 / torchvision==0.29.1 are pinned in pyproject.toml; point PIP_INDEX_URL / PIP_EXTRA_INDEX_URL
# at a CPU-only wheel index at build time for a much smaller image.
RUN pip install .
RUN useradd --create-home defectloop && mkdir -p /var/lib/defectloop && chown defectloop /var/lib/defectloop
USER defectloop
CMD ["defectloop", "--help"]
