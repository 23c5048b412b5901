# tern's image: tern-agent, the CNI plugin (installed on the node by the
# DaemonSet's init container) and ternctl, on a small Debian with the tools the
# agent runs (iptables and ip6tables, both backends; ipset; iproute2; conntrack).
# Build: make image (with docker or podman when one runs; without one, the same
# content is put together by hack/image.sh from hack/images/tern.packages).
ARG GO_VERSION=1.26.8
FROM golang:${GO_VERSION}-bookworm AS build
ARG VERSION=dev
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/ \
      ./cmd/tern-agent ./cmd/tern-cni ./cmd/ternctl

FROM debian:bookworm-slim
COPY hack/images/tern.packages /tmp/tern.packages
RUN apt-get update \
 && sed 's/#.*//' /tmp/tern.packages | xargs apt-get install -y --no-install-recommends \
 && rm -rf /var/lib/apt/lists/* /tmp/tern.packages
COPY --from=build /out/ /usr/local/bin/
USER 0
ENTRYPOINT ["/usr/local/bin/tern-agent"]
