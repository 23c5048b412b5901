# tern's image: tern-agent, the CNI plugin (installed on the node by the
# DaemonSet's init container) and ternctl, on a small Debian with the tools the
# agent runs (iptables and ip6tables, both backends; ipset; iproute2; conntrack).
# Build: make image (needs a container engine).
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
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables ipset iproute2 conntrack ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
USER 0
ENTRYPOINT ["/usr/local/bin/tern-agent"]
