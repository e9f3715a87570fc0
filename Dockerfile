# GNU Mailman's master watcher, as a container: the static `mailman` binary
# on `scratch`, running as PID 1 (`mailman master`).
#
#   docker build -t mailman .                  (needs the rust image)
#   contrib/docker/build-local.sh mailman      (pulls nothing: see there)

# ---- build stage: the static binary from source ----
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN rustup target add x86_64-unknown-linux-musl \
 && cargo build --release --locked \
 && sh contrib/docker/stage.sh /out target/x86_64-unknown-linux-musl/release/mailman

# ---- runtime stage (contrib/docker/build-local.sh builds from this line on) ----
FROM scratch AS runtime
COPY --from=build /out/etc/ /etc/
COPY --from=build /out/bin/ /usr/local/bin/
COPY --from=build --chown=8024:8024 /out/var/lib/mailman/ /var/lib/mailman/
ENV PATH=/usr/local/bin
USER mailman
WORKDIR /var/lib/mailman
VOLUME ["/var/lib/mailman"]
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --timeout=3s --start-period=2s --retries=3 CMD ["mailman", "status", "--check"]
ENTRYPOINT ["mailman", "master"]
