# Vigil's offline-capable Python base: Debian's own python3 on an image imported from
# `debootstrap --variant=minbase bookworm` (no registry needed). `make test-deploy` builds it as
# vigil-base:bookworm and keeps it between runs. The Vigil Dockerfile takes it as BASE_IMAGE;
# anywhere a registry is reachable, the default python:3.11-slim-bookworm does as well.
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
# The machine's own CA files (a TLS-inspecting egress proxy): pip inside builds needs them.
COPY ca/ /usr/local/share/ca-certificates/
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       ca-certificates python3 python3-venv \
    && update-ca-certificates \
    && rm -rf /var/lib/apt/lists/*
ENV LANG=C.UTF-8
CMD ["python3"]
