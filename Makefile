# kubelet-plugin: the two commands are `make demo` and `make test`.

CARGO   ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)

# One build serves both README commands: the demo, the tests, clippy and the
# static release binaries of this machine's arch all use the same target,
# profile and flags, so the grpcio C core (most of a first build's time) is
# compiled once. It is the shipped binary: static (glibc crt-static, README
# says why not musl), release profile.
HOST := $(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p')
HOST_ENV := $(shell echo '$(HOST)' | tr 'a-z-' 'A-Z_')
STATIC_FLAGS := -C target-feature=+crt-static
export CARGO_TARGET_$(HOST_ENV)_RUSTFLAGS := $(STATIC_FLAGS)
BUILD_FLAGS := --release --target $(HOST)
BUILD := $(TARGET_DIR)/$(HOST)/release

.PHONY: all deps test-deps build static static-x86_64 static-aarch64 static-armv7 demo test \
	lint fmt bench bench-dra fuzz cdi kubelet run.crand run.kvm deploy undeploy image release clean

# Where the targets that touch a real node work; override on the command
# line, e.g. `make run.crand DEVICE_PLUGIN_DIR=/tmp/dp`.
DEVICE_PLUGIN_DIR ?= /var/lib/kubelet/device-plugins
DEV_DIR           ?= /dev
CDI_DIR           ?= /var/run/cdi
LOG_LEVEL         ?= info
# The kubelet binary for `make kubelet`, and the static pod dir it watches
# (kubelet/kubelet.yaml's staticPodPath).
KUBELET           ?=
STATIC_POD_DIR    ?= kubelet/run/pods
PODS              := busybox-crand.yaml busybox-kvm.yaml

all: build

# Installs those of the given Debian packages that are missing (as root).
define install
	@missing=""; \
	for pkg in $(1); do \
	  dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q "ok installed" || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
endef

# What the grpcio C core needs to build.
deps:
	$(call install,cmake g++ make)

# What the tests need besides: a real container runtime for the CDI tests,
# shellcheck for the scripts, etcd for the API server the kube client's
# suite starts, what the realnode kit's `cluster` script runs for the DRA
# suite (etcd, runc, the CNI plugins, jq, curl, openssl, ip, pgrep: it
# would apt-get some of them itself, in the middle of a test), debootstrap
# and systemd-nspawn for the unit's test under systemd as PID 1, and
# Prometheus's own text format checker, promtool, taken out of Debian's
# prometheus package (not installed: that would bring a Prometheus server
# along).
PROMTOOL := $(abspath $(TARGET_DIR)/tools/promtool)
export PROMTOOL
test-deps: deps $(PROMTOOL)
	$(call install,podman runc busybox-static util-linux file systemd xz-utils shellcheck \
	  etcd-server etcd-client containernetworking-plugins jq curl openssl iproute2 procps \
	  debootstrap systemd-container)

$(PROMTOOL):
	$(call install,dpkg)
	@rm -rf $(TARGET_DIR)/tools/deb && mkdir -p $(TARGET_DIR)/tools/deb
	cd $(TARGET_DIR)/tools/deb && { apt-get download prometheus >/dev/null 2>&1 \
	  || { apt-get update -qq && apt-get download prometheus; }; }
	dpkg-deb -x $(TARGET_DIR)/tools/deb/prometheus_*.deb $(TARGET_DIR)/tools/deb/root
	cp $(TARGET_DIR)/tools/deb/root/usr/bin/promtool $@
	rm -rf $(TARGET_DIR)/tools/deb

build: deps
	$(CARGO) build $(BUILD_FLAGS)

# Static, stripped binaries for each arch, each checked. The one of this
# machine's arch is `make build`'s (the same target dir and flags).
X86_64  := x86_64-unknown-linux-gnu
AARCH64 := aarch64-unknown-linux-gnu
ARMV7   := armv7-unknown-linux-gnueabihf
STATIC_X86_64  := $(TARGET_DIR)/$(X86_64)/release
STATIC_AARCH64 := $(TARGET_DIR)/$(AARCH64)/release
STATIC_ARMV7   := $(TARGET_DIR)/$(ARMV7)/release
# Cargo.toml's version, then git's word on this commit: "0.1.0" on the tag
# v0.1.0, "0.1.0-3-gabc1234" or "0.1.0-abc1234-dirty" elsewhere.
CARGO_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
GIT_DESCRIBE  := $(shell git describe --tags --always --dirty --match 'v*' 2>/dev/null)
VERSION := $(if $(filter v$(CARGO_VERSION),$(GIT_DESCRIBE)),$(CARGO_VERSION),$(CARGO_VERSION)$(if $(GIT_DESCRIBE),-$(patsubst v$(CARGO_VERSION)-%,%,$(GIT_DESCRIBE))))
export KUBELET_PLUGIN_VERSION := $(VERSION)

# Checks the binaries in dir $(1), run through $(2) (a qemu, or nothing):
# statically linked, stripped, and a round trip of the plugins against
# kubelet-sim (register, list, allocate, health change, restart, SIGTERM).
# The wrapper lets kubelet-sim start the plugin through qemu too.
define check-static
	@for b in kubelet-plugin kubelet-sim; do \
	  f=$(1)/$$b; info=$$(file -b $$f); \
	  echo "$$f: $$(stat -c %s $$f) bytes; $$info"; \
	  case "$$info" in *dynamically*|*interpreter*) echo "$$f is not static" >&2; exit 1;; esac; \
	  case "$$info" in *"not stripped"*) echo "$$f is not stripped" >&2; exit 1;; esac; \
	done
	$(2) $(1)/kubelet-plugin --version
	@wrap=$$(mktemp); trap 'rm -f $$wrap' EXIT; \
	printf '#!/bin/sh\nexec $(2) %s "$$@"\n' "$(abspath $(1))/kubelet-plugin" > $$wrap; chmod 700 $$wrap; \
	$(2) $(1)/kubelet-sim demo --plugin-bin $$wrap > $(1)/demo.log 2>&1 \
	  || { cat $(1)/demo.log; echo "round trip against kubelet-sim failed" >&2; exit 1; }; \
	echo "$(1): round trip against kubelet-sim passed (log: $(1)/demo.log)"
endef

static: static-x86_64 static-aarch64 static-armv7

static-x86_64: deps
	$(call install,file)
	CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="$(STATIC_FLAGS)" \
	  $(CARGO) build --release --target $(X86_64)
	$(call check-static,$(STATIC_X86_64),)

# Cross-built with Debian's aarch64 toolchain; checked under qemu.
static-aarch64: deps
	$(call install,file g++-aarch64-linux-gnu qemu-user-static)
	@rustup target list --installed | grep -qx $(AARCH64) || rustup target add $(AARCH64)
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="$(STATIC_FLAGS)" \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
	CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
	CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++ \
	AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar \
	  $(CARGO) build --release --target $(AARCH64)
	$(call check-static,$(STATIC_AARCH64),qemu-aarch64-static)

# The same for 32-bit ARM (Raspberry Pi 2/3), with Debian's armhf toolchain.
# The grpcio C core needs no more than aarch64: the cmake crate sets
# CMAKE_SYSTEM_NAME/PROCESSOR (Linux, arm) itself, armv7 does 64-bit atomics
# inline (no libatomic), the core is built without TLS (no BoringSSL asm),
# and no time_t crosses its API (C and Rust keep glibc's 32-bit one). Only
# its Rust bindings are missing: grpcio-sys ships none for arm, so bindgen
# makes them (turned on in Cargo.toml), hence libclang-dev.
static-armv7: deps
	$(call install,file gcc-arm-linux-gnueabihf g++-arm-linux-gnueabihf qemu-user-static libclang-dev)
	@rustup target list --installed | grep -qx $(ARMV7) || rustup target add $(ARMV7)
	CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUSTFLAGS="$(STATIC_FLAGS)" \
	CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc \
	CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc \
	CXX_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-g++ \
	AR_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-ar \
	  $(CARGO) build --release --target $(ARMV7)
	$(call check-static,$(STATIC_ARMV7),qemu-arm-static)

# The plugins against the bundled kubelet simulator, in a temp dir.
demo: build
	$(BUILD)/kubelet-sim demo --plugin-bin $(BUILD)/kubelet-plugin

# Every test, then formatting and lints, on `make build`'s build: the tests
# run the very binaries that ship.
# The fuzz smoke test needs the harnesses, which only the `fuzzing`
# feature compiles in: a short run on that build first, then everything on
# the shipped build, which is what target/ then holds.
# Every test must run here: a test that cannot (no promtool, not a static
# build, no /dev/kvm) fails instead of passing without checking anything
# (KUBELET_PLUGIN_REQUIRE). What is rightly skipped (the real-node suite
# refusing a kubelet state that is not its own, or without its kit) is
# listed at the end.
SKIPS := $(abspath $(TARGET_DIR))/test-skips.txt
test: test-deps build
	@rm -f $(SKIPS)
	@set -e; export KUBELET_PLUGIN_REQUIRE=1 KUBELET_PLUGIN_SKIPS=$(SKIPS); \
	status=0; \
	$(CARGO) test $(BUILD_FLAGS) --features fuzzing --test fuzz || status=$$?; \
	if [ $$status = 0 ]; then $(CARGO) test $(BUILD_FLAGS) || status=$$?; fi; \
	echo; if [ -s $(SKIPS) ]; then echo "skipped:"; sed 's/^/  /' $(SKIPS); else echo "skipped: nothing"; fi; \
	exit $$status
	$(CARGO) fmt --check
	$(CARGO) clippy $(BUILD_FLAGS) --all-targets --all-features -- -D warnings

lint: deps
	$(CARGO) fmt --check
	$(CARGO) clippy $(BUILD_FLAGS) --all-targets --all-features -- -D warnings

fmt:
	$(CARGO) fmt

# The figures of design §6, measured on the static x86_64 binaries over
# the real wire against kubelet-sim, in temp dirs (as root: mknod).
BENCH_OUT := $(TARGET_DIR)/bench/results.json
# The DRA figures need a real kube-apiserver: the realnode kit (REALNODE_DIR,
# else shared/realnode beside the checkout or a dir above), and etcd.
REALNODE_DIR ?= $(shell d=$(CURDIR); while [ "$$d" != / ]; do d=$$(dirname $$d); [ -x $$d/shared/realnode/unpack ] && { echo $$d/shared/realnode; break; }; done)
# The plugin is also built without DRA (only our crate is compiled again),
# for its size; then the shipped build is put back.
DP_ONLY_BIN := $(TARGET_DIR)/bench/kubelet-plugin-without-dra
bench: build
	$(CARGO) build $(BUILD_FLAGS) --no-default-features --bin kubelet-plugin
	@mkdir -p $(dir $(DP_ONLY_BIN)) && cp $(BUILD)/kubelet-plugin $(DP_ONLY_BIN)
	$(CARGO) build $(BUILD_FLAGS)
	@cmp -s $(BUILD)/kubelet-plugin $(DP_ONLY_BIN) && { echo "the shipped build was not put back" >&2; exit 1; } || true
	$(BUILD)/kubelet-sim bench --plugin-bin $(BUILD)/kubelet-plugin --out $(BENCH_OUT) \
	  --device-plugin-only-bin $(DP_ONLY_BIN)
	@if [ -n "$(REALNODE_DIR)" ]; then \
	  $(MAKE) --no-print-directory bench-dra; \
	else \
	  echo "DRA figures skipped: no realnode kit for a kube-apiserver (set REALNODE_DIR)"; \
	fi

bench-dra: build
	$(call install,etcd-server openssl xz-utils)
	$(BUILD)/kubelet-sim bench-dra --plugin-bin $(BUILD)/kubelet-plugin --kit $(REALNODE_DIR) \
	  --out $(TARGET_DIR)/bench/dra.json

# cargo fuzz (nightly) on each harness of src/fuzzing.rs for FUZZ_SECONDS.
# The kept corpus, testdata/fuzz/<target>, is read; what a run finds goes to
# target/fuzz-corpus/<target> (copy what is worth keeping), crashes to
# src/fuzz/artifacts/<target>. The first run builds the grpcio C core once
# more, for the fuzz build (about 14 min here).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := allocate names flags
fuzz: deps
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(TARGET_DIR)/fuzz-corpus/$$t && \
	  echo "fuzzing $$t for $(FUZZ_SECONDS) s" && \
	  env -u CARGO_TARGET_$(HOST_ENV)_RUSTFLAGS $(CARGO) +nightly fuzz run --fuzz-dir src/fuzz $$t $(TARGET_DIR)/fuzz-corpus/$$t testdata/fuzz/$$t \
	    -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

# Makes the crand nodes and writes the CDI specs once, on the real paths.
cdi: build
	$(BUILD)/kubelet-plugin cdi --dev-dir $(DEV_DIR) --cdi-dir $(CDI_DIR)

# One plugin each, on the real kubelet paths, in the foreground (as root).
run.crand: build
	$(BUILD)/kubelet-plugin run --plugin crand --device-plugin-dir $(DEVICE_PLUGIN_DIR) \
	  --dev-dir $(DEV_DIR) --cdi-dir $(CDI_DIR) --log-level $(LOG_LEVEL)

run.kvm: build
	$(BUILD)/kubelet-plugin run --plugin kvm --device-plugin-dir $(DEVICE_PLUGIN_DIR) \
	  --dev-dir $(DEV_DIR) --cdi-dir $(CDI_DIR) --log-level $(LOG_LEVEL)

# A real, standalone kubelet (no API server) with kubelet/kubelet.yaml; its
# log goes to kubelet/run/kubelet.log too.
kubelet:
	@if [ -z "$(KUBELET)" ] || [ ! -x "$(KUBELET)" ]; then \
	  echo "make kubelet: set KUBELET to a kubelet binary, v1.31 or newer (got '$(KUBELET)')." >&2; \
	  echo "  Get one from the Kubernetes release server, e.g." >&2; \
	  echo "    curl -LO https://dl.k8s.io/release/v1.31.0/bin/linux/amd64/kubelet   # arm64: linux/arm64" >&2; \
	  echo "    chmod +x kubelet && sudo make kubelet KUBELET=\$$PWD/kubelet" >&2; \
	  echo "  It needs root, containerd on /run/containerd/containerd.sock, and swap off or allowed." >&2; \
	  exit 2; \
	fi
	mkdir -p kubelet/run/pods
	$(KUBELET) --config=$(abspath kubelet/kubelet.yaml) --v=2 2>&1 | tee kubelet/run/kubelet.log

# The static pods in and out of the kubelet's static pod dir. Copied under a
# dot name, then renamed: the kubelet skips dot files, so it never reads a
# half-written manifest.
deploy:
	@test -d "$(STATIC_POD_DIR)" || { echo "make deploy: no static pod dir $(STATIC_POD_DIR): start the kubelet (make kubelet) or set STATIC_POD_DIR" >&2; exit 2; }
	@for pod in $(PODS); do \
	  cp kubelet/pods/$$pod "$(STATIC_POD_DIR)/.$$pod.tmp" && mv "$(STATIC_POD_DIR)/.$$pod.tmp" "$(STATIC_POD_DIR)/$$pod" || exit 1; \
	  echo "deployed $(STATIC_POD_DIR)/$$pod"; \
	done

undeploy:
	@for pod in $(PODS); do \
	  if [ -e "$(STATIC_POD_DIR)/$$pod" ]; then rm -f "$(STATIC_POD_DIR)/$$pod" && echo "removed $(STATIC_POD_DIR)/$$pod"; fi; \
	done

# The DaemonSet's FROM-scratch image for each arch, and the manifest list
# $(IMAGE) that names them (podman): a node pulls the image of its own arch.
# Each arch's image is also there as $(IMAGE)-<arch> (amd64, arm64, armv7).
# IMAGE_ARCHES are platforms: the Dockerfile's TARGETARCH, and so the
# staging dir, is the part before the slash, as builders set it ("arm" for
# arm/v7, the variant going to the manifest list).
CONTAINER_ENGINE ?= podman
IMAGE ?= kubelet-plugin:$(CARGO_VERSION)
IMAGE_ARCHES := amd64 arm64 arm/v7
image: static
	$(call install,podman)
	rm -rf $(TARGET_DIR)/image && mkdir -p $(TARGET_DIR)/image/amd64 $(TARGET_DIR)/image/arm64 $(TARGET_DIR)/image/arm
	cp $(STATIC_X86_64)/kubelet-plugin $(TARGET_DIR)/image/amd64/
	cp $(STATIC_AARCH64)/kubelet-plugin $(TARGET_DIR)/image/arm64/
	cp $(STATIC_ARMV7)/kubelet-plugin $(TARGET_DIR)/image/arm/
	@$(CONTAINER_ENGINE) manifest rm $(IMAGE) >/dev/null 2>&1 || true
	$(CONTAINER_ENGINE) manifest create $(IMAGE)
	@for platform in $(IMAGE_ARCHES); do \
	  arch=$${platform%%/*}; tag=$(IMAGE)-$$(echo $$platform | tr -d /); \
	  $(CONTAINER_ENGINE) build --platform linux/$$platform --build-arg TARGETARCH=$$arch \
	    -f kubelet/daemonset/Dockerfile -t $$tag $(TARGET_DIR)/image || exit 1; \
	  $(CONTAINER_ENGINE) manifest add $(IMAGE) containers-storage:localhost/$$tag || exit 1; \
	done
	$(CONTAINER_ENGINE) manifest inspect $(IMAGE)

# dist/kubelet-plugin-<version>-<arch>.tar.gz for each arch, and SHA256SUMS.
# Reproducible: sorted names, root owner, the commit's time, gzip -n.
DIST := dist
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || date +%s)
release: static
	rm -rf $(DIST) && mkdir -p $(DIST)/stage
	@for arch in x86_64 aarch64 armv7; do \
	  case $$arch in armv7) triple=$(ARMV7);; *) triple=$$arch-unknown-linux-gnu;; esac; \
	  name=kubelet-plugin-$(VERSION)-$$arch; d=$(DIST)/stage/$$name; \
	  mkdir -p $$d/bin $$d/init.d $$d/openrc $$d/default $$d/systemd $$d/daemonset $$d/pods || exit 1; \
	  cp $(TARGET_DIR)/$$triple/release/kubelet-plugin \
	     $(TARGET_DIR)/$$triple/release/kubelet-sim $$d/bin/ && \
	  cp kubelet/init.d/kubelet-plugin $$d/init.d/ && \
	  cp kubelet/openrc/kubelet-plugin $$d/openrc/ && \
	  cp kubelet/default/kubelet-plugin $$d/default/ && \
	  cp kubelet/systemd/kubelet-plugin.service $$d/systemd/ && \
	  cp kubelet/daemonset/daemonset.yaml kubelet/daemonset/daemonset-plugins-registry.yaml \
	     kubelet/daemonset/Dockerfile $$d/daemonset/ && \
	  cp kubelet/pods/*.yaml $$d/pods/ && cp kubelet/kubelet.yaml $$d/ && \
	  sed -n '/<!-- release:begin -->/,/<!-- release:end -->/p' README.md | sed '1d;$$d' > $$d/README.md && \
	  test -s $$d/README.md || { echo "README.md has no release excerpt" >&2; exit 1; }; \
	  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@$(SOURCE_DATE_EPOCH) \
	    -C $(DIST)/stage -cf - $$name | gzip -n -9 > $(DIST)/$$name.tar.gz || exit 1; \
	done
	rm -rf $(DIST)/stage
	cd $(DIST) && sha256sum *.tar.gz > SHA256SUMS
	@cd $(DIST) && ls -l *.tar.gz && cat SHA256SUMS

clean:
	$(CARGO) clean
	rm -rf $(DIST)
