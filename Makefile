# kubelet-plugin: the two commands are `make demo` and `make test`.

CARGO   ?= cargo
RELEASE := $(or $(CARGO_TARGET_DIR),target)/release

.PHONY: all deps test-deps build demo test lint fmt bench clean

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

# What the tests need besides: a real container runtime for the CDI tests.
test-deps: deps
	$(call install,podman runc busybox-static util-linux)

build: deps
	$(CARGO) build --release

# The plugins against the bundled kubelet simulator, in a temp dir.
demo: build
	$(RELEASE)/kubelet-sim demo --plugin-bin $(RELEASE)/kubelet-plugin

# Every test, then formatting and lints.
test: test-deps
	$(CARGO) test
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

lint: deps
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

bench:
	@echo "make bench: not yet (the benchmark issue adds it)"

clean:
	$(CARGO) clean
