# Portcullis — the two commands a fresh Debian 12 machine needs: `make run`, `make test`.
BUILD      ?= build
ASAN_BUILD ?= build-asan
JOBS       ?= $(shell nproc)
CONFIG     ?= conf/portcullis.toml

.PHONY: all deps build run test test-asan bench clean

all: build

deps:
	@./tools/install-deps.sh

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

run: build
	@./tools/run-demo.sh $(BUILD) $(CONFIG)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

$(ASAN_BUILD)/CMakeCache.txt:
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DPORTCULLIS_SANITIZE=ON -DPORTCULLIS_BENCH=OFF

test-asan: deps $(ASAN_BUILD)/CMakeCache.txt
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --output-on-failure -j $(JOBS)

bench:
	@./tools/install-deps.sh --bench
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release
	cmake --build $(BUILD) -j $(JOBS)
	$(BUILD)/bin/codec_bench --benchmark_min_time=0.2
	./bench/compare.sh $(BUILD)
	MODE=tls ./bench/compare.sh $(BUILD)
	./bench/idle_memory.sh $(BUILD)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
