# The server's container image. ./run.sh builds it, runs the tests in it, then runs it.
# Modelled on Google Cloud Run's python helloworld sample: every line says why it is here.

# The official slim image by default; a build argument lets CI build on a locally made base.
ARG PYTHON_IMAGE=python:3.12-slim
# Debian with Python; "python" and "python -m pip" work on every base this template uses.
FROM ${PYTHON_IMAGE}

# Log lines reach `docker logs` at once instead of waiting in Python's output buffer.
ENV PYTHONUNBUFFERED=1
# The code folder stays read-only to the app user, so do not try to write .pyc files there.
ENV PYTHONDONTWRITEBYTECODE=1
# coverage (run by testing.sh inside the image) writes its data where the app user may write.
ENV COVERAGE_FILE=/tmp/.coverage

# An unprivileged user with a fixed numeric UID (Kubernetes runAsNonRoot can only check a number).
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin app

# Where the app lives; commands below and at run time start here.
WORKDIR /app

# The pinned dependencies first, in their own layer: editing run.py reuses it and rebuilds in seconds.
COPY requirements.txt ./
# No pip cache in the image: it would only make the image bigger.
RUN python -m pip install --no-cache-dir -r requirements.txt

# The whole project, less what .dockerignore keeps out: your code and folders, the server's
# package (server/), static files and the tests, so the image can test itself.
COPY . .

# Everything from here on, and the server itself, runs as that user, never as root.
USER 10001

# The server's port (PORT); run.sh publishes it as HOST_PORT.
EXPOSE 8080
# The private admin listener (ADMIN_PORT) for probes and internal pages; run.sh does not publish it.
EXPOSE 8081

# Docker marks the container unhealthy when readiness stops answering 200; slim images have no
# curl, so Python's standard library asks (urlopen raises, and so exits 1, on anything but 2xx).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthcheck' % os.environ.get('PORT', '8080'), timeout=2)"]

# Exec form: Python is PID 1 and gets docker stop's SIGTERM itself, so it drains and exits 0.
CMD ["python", "run.py"]
