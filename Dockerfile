# ckptd and the `ckpt` CLI on Debian 12.
#
#   docker build -t ckptd:0.1.0 .
#   docker run -d --name ckptd -p 50051:50051 -v ckptd-data:/data \
#     -v $PWD/auth:/etc/ckptd/auth:ro -v $PWD/tls:/etc/ckptd/tls:ro ckptd:0.1.0
#
# README.md, Operations / Deployment, says what goes in auth/ and tls/.
# The build stage installs the packages with the script CI and the tests use
# (deploy/install-deps.sh) and builds with the README's commands; only the
# two binaries go into the runtime image. .dockerignore keeps host build
# trees (build*/) and .git out of the context: a copied CMakeCache.txt from
# another directory makes `cmake --preset default` fail.
FROM debian:12 AS build
WORKDIR /src
# The package layer is cached until install-deps.sh changes.
COPY deploy/install-deps.sh deploy/install-deps.sh
RUN ./deploy/install-deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cmake --preset default \
    && cmake --build --preset deploy \
    && cmake --install build --component Unspecified --strip --prefix /opt/ckptd

FROM debian:12-slim
# The shared libraries ckptd and ckpt load, with what they depend on
# (tests/deploy checks this list against ldd of the built binaries; RocksDB
# is linked statically, its compression libraries are not).
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
      libabsl20220623 libgrpc++1.51 libprotobuf32 libspdlog1.10 libxxhash0 \
      libsnappy1v5 liblz4-1 libzstd1 libbz2-1.0 zlib1g \
      libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libcivetweb1 libcurl4 \
    && rm -rf /var/lib/apt/lists/*
# A fixed numeric uid/gid, so that Kubernetes' runAsNonRoot can check it and
# volume ownership (fsGroup, chown on the host) is predictable.
RUN groupadd --system --gid 10001 ckptd \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data \
      --no-create-home --shell /usr/sbin/nologin ckptd \
    && install -d -o 10001 -g 10001 -m 0750 /data \
    && install -d -m 0755 /etc/ckptd /etc/ckptd/auth /etc/ckptd/tls
COPY --from=build /opt/ckptd/bin/ckptd /opt/ckptd/bin/ckpt /usr/local/bin/
COPY deploy/docker/ckptd.flags /etc/ckptd/ckptd.flags
USER 10001:10001
# A new named volume takes /data's owner (ckptd) from the image.
VOLUME /data
EXPOSE 50051
# Loopback-only plaintext health port (--health_listen in ckptd.flags).
HEALTHCHECK --interval=30s --timeout=10s --start-period=2m --retries=3 \
  CMD ["/usr/local/bin/ckpt", "health", "--server", "127.0.0.1:50052", "--timeout", "5s"]
# ckptd handles SIGTERM itself (NOT_SERVING, --shutdown_grace, RocksDB
# closed), also as PID 1, and starts no child processes: no init needed.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/ckptd", "--flagfile=/etc/ckptd/ckptd.flags"]
