# The hub image: the same package `make run` installs, on its external broker and database.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY hub ./hub
COPY adapters ./adapters
COPY schemas ./schemas
COPY consent ./consent
COPY examples ./examples
RUN pip install --no-cache-dir .
ENV HUB_DATA_DIR=/var/lib/hub HUB_HTTP_HOST=0.0.0.0
EXPOSE 8000
CMD ["hub", "run"]
