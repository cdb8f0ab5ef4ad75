# syntax=docker/dockerfile:1
# One image for every chargesim subcommand (operator, publisher, listener, api, broker, run):
#   docker build -t chargesim:dev --build-arg VERSION=$(git describe --tags --always --dirty) .
# The binary is static (CGO_ENABLED=0), so the runtime image is distroless/static: no shell, no
# package manager, nothing but CA certificates, tzdata and /etc/passwd with the nonroot user.
# It never contains FerretDB or MongoDB: the store is always an external MongoDB.

ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
WORKDIR /src
# Module downloads are cached in their own layer: go.mod/go.sum change far less often than code.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
ARG TARGETOS=linux
ARG TARGETARCH
# GOTOOLCHAIN=local: the image's Go is the toolchain; never download another one mid-build.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH GOTOOLCHAIN=local \
    go build -trimpath -buildvcs=false -ldflags "-s -w -X main.version=${VERSION}" -o /out/chargesim .

FROM gcr.io/distroless/static:nonroot
ARG VERSION=dev
LABEL org.opencontainers.image.title="chargesim" \
      org.opencontainers.image.description="EV charging station simulator and telemetry pipeline (publisher, listener, API, broker, operator)" \
      org.opencontainers.image.source="https://github.com/chargesim/chargesim" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/chargesim /chargesim
# 65532 is distroless' "nonroot"; numeric so runAsNonRoot can verify it without /etc/passwd.
USER 65532:65532
# Defaults of the subcommands: API 8080, metrics/health 9090, MQTT 1883 (broker).
EXPOSE 8080 9090 1883
ENTRYPOINT ["/chargesim"]
CMD ["--help"]
