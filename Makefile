# Portcullis — the two commands a fresh Debian 12 machine needs: `make run`, `make test`.
BUILD      ?= build
ASAN_BUILD ?= build-asan
JOBS       ?= $(shell nproc)
CONFIG     ?= conf/portcullis.toml
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZERS    ?= http_codec config token multipart json pcx1 audit_verify
SOAK_SECONDS ?= 600

.PHONY: all deps build run test test-asan test-tsan bench bench-micro fuzz soak lint clean

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

# ThreadSanitizer over the unit tests of everything shared between threads
# without a lock: rate limiter and lockout, detector, audit log, access log
# writer, alert webhook and syslog queues, alert fan-out, metrics tables.
TSAN_BUILD ?= build-tsan
TSAN_TESTS ?= RateLimiter*:Lockout*:IpKey*:Detect*:Audit*:AccessLog*:LogWriter*:AlertWebhook*:AlertDispatcher*:SyslogSink*:RefusalCounters*
$(TSAN_BUILD)/CMakeCache.txt:
	cmake -S . -B $(TSAN_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPORTCULLIS_TSAN=ON -DPORTCULLIS_BENCH=OFF

test-tsan: deps $(TSAN_BUILD)/CMakeCache.txt
	cmake --build $(TSAN_BUILD) -j $(JOBS) --target unit_tests
	TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 $(TSAN_BUILD)/bin/unit_tests --gtest_filter='$(TSAN_TESTS)'

# Every Google Benchmark suite (SPEC §9): parser, filters (token check + RBAC,
# validators), rate limiter, AES-GCM segmenting (pcx1 vs raw BoringSSL), audit
# chain (record, verify), detection, per-request logging work. Each suite's
# results also go to MICRO_OUT/<suite>.json (default
# bench/results/<UTC timestamp>-micro).
MICRO_BENCHES ?= codec_bench auth_bench validate_bench rate_limit_bench pcx1_bench audit_bench detect_bench logging_bench
bench-micro:
	@./tools/install-deps.sh --bench
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release
	cmake --build $(BUILD) -j $(JOBS)
	@out="$${MICRO_OUT:-bench/results/$$(date -u +%Y%m%dT%H%M%SZ)-micro}"; mkdir -p "$$out"; \
	for b in $(MICRO_BENCHES); do \
	  echo "== $$b"; \
	  $(BUILD)/bin/$$b --benchmark_min_time=0.2 --benchmark_out="$$out/$$b.json" --benchmark_out_format=json || exit 1; \
	done; \
	echo "bench-micro: results in $$out"

bench: bench-micro
	FLOOR=1 ./bench/compare.sh $(BUILD)
	MODE=tls ./bench/compare.sh $(BUILD)
	./bench/idle_memory.sh $(BUILD)
	MODE=encrypt UPLOAD_MB=1 DURATION=5 ./bench/compare.sh $(BUILD)
	MODE=encrypt UPLOAD_MB=100 DURATION=5 ./bench/compare.sh $(BUILD)
	./bench/upload_rss.sh $(BUILD)
	DURATION=5 ./bench/logging_cost.sh $(BUILD)
	MODE=limits DURATION=5 ROUNDS=4 ./bench/compare.sh $(BUILD)
	MODE=validate DURATION=5 ROUNDS=4 ./bench/compare.sh $(BUILD)
	MODE=auth DURATION=5 ROUNDS=4 ./bench/compare.sh $(BUILD)

# One proxy under SOAK_SECONDS of mixed traffic (tools/soak.sh): fails if it
# dies, its RSS grows > 10 % after warm-up, or its audit chain does not verify.
soak: build
	@./tools/install-deps.sh --bench
	./tools/soak.sh $(BUILD) $(SOAK_SECONDS)

# libFuzzer targets (fuzz/), clang + ASan/UBSan, each run FUZZ_SECONDS on a
# scratch copy of its seed corpus tests/fuzz/<target>/ (the seeds are never
# written to). Crash inputs land in $(FUZZ_BUILD)/crashes/<target>/; any crash
# fails the target.
fuzz:
	@./tools/install-deps.sh --fuzz
	CC=clang CXX=clang++ cmake -S . -B $(FUZZ_BUILD) -DPORTCULLIS_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo
	cmake --build $(FUZZ_BUILD) -j $(JOBS)
	@failed=""; \
	for t in $(FUZZERS); do \
	  corpus=$(FUZZ_BUILD)/corpus/$$t; crashes=$(FUZZ_BUILD)/crashes/$$t; \
	  rm -rf $$crashes; mkdir -p $$corpus $$crashes; cp -f tests/fuzz/$$t/* $$corpus/; \
	  echo "== fuzz $$t ($(FUZZ_SECONDS) s)"; \
	  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  $(FUZZ_BUILD)/bin/$${t}_fuzz -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
	    -print_final_stats=1 -artifact_prefix=$$crashes/ $$corpus > $(FUZZ_BUILD)/$$t.log 2>&1 \
	    || failed="$$failed $$t"; \
	  grep -E '^#[0-9]+.*DONE|^stat::number_of_executed_units|^stat::average_exec_per_sec|SUMMARY|^artifact_prefix|Test unit written' $(FUZZ_BUILD)/$$t.log || true; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: FAILED:$$failed (logs in $(FUZZ_BUILD)/<target>.log)"; exit 1; fi; \
	echo "fuzz: all fuzzers ran $(FUZZ_SECONDS) s without a crash"

# Static analysis: clang-tidy 14 (checks and the reason for each disabled one
# in .clang-tidy) and cppcheck over every .cc of proxy/, filters/ and tools/;
# never tests, bench, fuzz or third-party code. Any finding fails the target.
# Deliberate exceptions are suppressed at their line with a reason
# (`// NOLINT(check): why`, `// cppcheck-suppress id ; why`). The compile
# database is a Release configure of $(LINT_BUILD): nothing is generated at
# build time, so configuring is enough. clang-tidy's full output lands in
# $(LINT_BUILD)/clang-tidy.log.
LINT_BUILD   ?= build-lint
LINT_SOURCES := $(sort $(wildcard proxy/*.cc filters/*.cc tools/*.cc tools/*/*.cc))
# Per-file progress lines of run-clang-tidy / clang-tidy, hidden from the output.
LINT_NOISE   := ^clang-tidy-14 |^[0-9]+ warnings? (generated|treated as errors)\.?$$

lint:
	@./tools/install-deps.sh --lint
	cmake -S . -B $(LINT_BUILD) -DCMAKE_BUILD_TYPE=Release -DCMAKE_EXPORT_COMPILE_COMMANDS=ON > /dev/null
	@echo "== clang-tidy ($(words $(LINT_SOURCES)) files, -j $(JOBS))"; \
	if command -v run-clang-tidy-14 > /dev/null; then \
	  run-clang-tidy-14 -clang-tidy-binary clang-tidy-14 -p $(LINT_BUILD) -j $(JOBS) -quiet \
	    $(foreach f,$(LINT_SOURCES),'^$(CURDIR)/$(f)$$') > $(LINT_BUILD)/clang-tidy.log 2>&1; \
	else \
	  echo $(LINT_SOURCES) | xargs -n 1 -P $(JOBS) clang-tidy-14 -p $(LINT_BUILD) --quiet \
	    > $(LINT_BUILD)/clang-tidy.log 2>&1; \
	fi; tidy=$$?; \
	grep -vE '$(LINT_NOISE)' $(LINT_BUILD)/clang-tidy.log; \
	echo "== cppcheck ($(words $(LINT_SOURCES)) files)"; \
	cppcheck --quiet -j $(JOBS) --std=c++20 --language=c++ --library=posix -I . \
	  --enable=warning,performance,portability --inline-suppr --suppress=missingIncludeSystem \
	  --error-exitcode=1 $(LINT_SOURCES); cpp=$$?; \
	if [ $$tidy -ne 0 ] || [ $$cpp -ne 0 ]; then \
	  echo "lint: FAILED (clang-tidy exit $$tidy, cppcheck exit $$cpp)"; exit 1; \
	fi; \
	echo "lint: clang-tidy and cppcheck found nothing"

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD) $(LINT_BUILD)
