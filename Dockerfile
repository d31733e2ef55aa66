# Builds ckptd and the ckpt CLI on Debian 12 and runs the daemon.
FROM debian:12 AS build
WORKDIR /src
COPY deploy/install-deps.sh deploy/install-deps.sh
RUN ./deploy/install-deps.sh
COPY . .
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DCKPTD_BUILD_TESTS=OFF -DCKPTD_BUILD_PYTHON=OFF \
    && cmake --build build --target ckptd ckpt \
    && cmake --install build --prefix /opt/ckptd

FROM debian:12-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
      libgrpc++1.51 libprotobuf32 librocksdb7.8 libspdlog1.10 libxxhash0 \
      libabsl20220623 libcivetweb1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/ckptd/bin/ /usr/local/bin/
VOLUME /data
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/ckptd", "--listen=0.0.0.0:50051", "--data_dir=/data"]
