# Vigil: one image for every service (membership, placement, address, supervisor) and the CLI.
#
#   docker build -t vigil:latest .
#   docker run --rm vigil:latest --help
#
# Without a registry, build on Vigil's own Debian base (what `make test-deploy` does; see
# deploy/images/python-base.Dockerfile):
#   docker build --build-arg BASE_IMAGE=vigil-base:bookworm -t vigil:latest .
#
# The entrypoint is the `vigil` console script, so a container's command is just the
# subcommand and its flags, e.g. `membership` or `address --node n1 --interface eth0`.
#
# Which user runs it:
#   The image runs as root by default, on purpose. `vigil address` installs an nftables
#   `netdev` table and adds/removes addresses on a host interface: it needs CAP_NET_ADMIN and
#   CAP_NET_RAW *effective* in the process. A non-root user does not get added capabilities
#   as effective ones (no ambient capabilities in Docker or Kubernetes), so address must run as
#   root with exactly those capabilities added (and, where the runtime allows, all others
#   dropped). `vigil supervisor` runs the groups' applications and must be able to signal them
#   on the host (host PID namespace).
#   The cluster-wide services (membership, placement) and the CLI need no privilege at all:
#   run them as the unprivileged `vigil` user created below (uid/gid 10001), e.g.
#   `--user 10001:10001` or `securityContext.runAsUser: 10001` (the compose file and the
#   Kubernetes manifests do so).

# Any Debian bookworm image with python3 and python3-venv.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# nftables: the address service's `netdev` table (fence for VIPs).
# iproute2: `ip` for address management and for operators debugging inside the container.
RUN apt-get update \
    && apt-get install -y --no-install-recommends nftables iproute2 \
    && rm -rf /var/lib/apt/lists/*

# A virtual environment: Debian's python refuses system-wide pip installs (PEP 668). It comes
# first on PATH, so `python3` in a group's command sees Vigil (e.g. vigil.lab.demo_app).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/vigil \
    PATH=/opt/vigil/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

WORKDIR /src
# Only what the distribution needs (pyproject.toml names README.md as its readme).
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY services ./services
RUN python3 -m venv /opt/vigil \
    && pip install --no-cache-dir . \
    && cd / && rm -rf /src \
    && groupadd --system --gid 10001 vigil \
    && useradd --system --uid 10001 --gid vigil --home-dir /nonexistent --shell /usr/sbin/nologin vigil

WORKDIR /
ENTRYPOINT ["vigil"]
CMD ["--help"]
