# Cairn: the two set-up commands are `make run` and `make test`.
BUILD_DIR ?= build
BUILD_TYPE ?= Release
CTEST_ARGS ?=
JOBS ?= $(shell nproc)

.PHONY: all deps configure build test run cluster clean bench

all: build

deps:
	@scripts/install-deps.sh

configure: deps
	@if [ ! -f $(BUILD_DIR)/build.ninja ]; then \
	  cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) \
	    -DCMAKE_CXX_COMPILER_LAUNCHER=ccache; \
	fi

build: configure
	@cmake --build $(BUILD_DIR) -j $(JOBS)

# Every test: unit and integration. Slow soak loops carry the label `soak` and
# run here in their short form (CAIRN_SOAK unset).
test: build
	@cd $(BUILD_DIR) && ctest --output-on-failure -j 2 --timeout 900 $(CTEST_ARGS)

# Single-node service under ./var; Ctrl-C stops it.
run: build
	@scripts/run.sh $(BUILD_DIR)

# etcd + three blockd nodes in cluster mode under ./var/cluster; Ctrl-C stops them all.
cluster: build
	@scripts/cluster.sh $(BUILD_DIR)

bench: build
	@bench/run_nbd_bench.sh $(BUILD_DIR)

clean:
	rm -rf $(BUILD_DIR)
