# edgefl-server image: CPU-only torch, non-root, EDIP on port 4321.
# The install step is the README's first command without the demo, so the README proves it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN useradd --create-home --uid 10001 edgefl
WORKDIR /opt/edgefl
COPY pyproject.toml README.md ./
COPY edgefl ./edgefl
COPY protocol ./protocol
COPY aggregators ./aggregators
COPY plugins ./plugins
# torch==2.13.0 from the CPU wheel index: the default index would pull a multi-GB CUDA build.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && /opt/venv/bin/pip install .
ENV PATH=/opt/venv/bin:$PATH

USER edgefl
VOLUME ["/jobs", "/state"]
EXPOSE 4321
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:4321/healthz', timeout=4).status == 200 else 1)"
ENTRYPOINT ["edgefl-server"]
CMD ["serve", "--jobs", "/jobs", "--state-dir", "/state", "--host", "0.0.0.0", "--port", "4321"]
