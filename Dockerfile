# fnmesh: one image for `fnmesh gateway`, `fnmesh node` and `fnmesh up`.
# Nodes need the host's python3/nodejs in /usr (bind-mounted read-only into every sandbox),
# libseccomp at run time, and privileges for cgroups and namespaces (see docker-compose.yml).

FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libseccomp-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p fnmesh-cli && cp target/release/fnmesh /usr/local/bin/fnmesh

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
        libseccomp2 python3 nodejs ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/fnmesh /usr/local/bin/fnmesh
ENV FNMESH_DATA_DIR=/var/lib/fnmesh
VOLUME /var/lib/fnmesh
ENTRYPOINT ["/usr/local/bin/fnmesh"]
CMD ["up", "--listen", "0.0.0.0:8080"]
