# Posternity Dispatch — the two commands are `make run` and `make test`.
# Everything the project needs is fetched by the project itself: Kafka from Maven Central (via
# mvn, cached in .cache/), Rust crates from crates.io.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
KAFKA := deploy/kafka/kafka.sh
WITH_KAFKA := deploy/kafka/with-kafka.sh
DEV_CONFIG := deploy/dev/dispatchd.toml
# Integration tests share one broker; a few threads keep the 2-core machine responsive.
TEST_THREADS ?= 4
# Tasks of each bench-fairness run (B's share is three quarters of them).
FAIRNESS_TASKS ?= 16000

.PHONY: help run test test-unit build lint fmt kafka-up kafka-down kafka-status kafka-logs clean bench bench-quick bench-burst bench-dev bench-deps faults bench-fanout bench-sender bench-fairness

help: ## Show the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

build: ## Build every crate (debug).
	$(CARGO) build --workspace --all-targets

run: ## The whole system on the local broker: Kafka, every topic, then `dispatchd all` in the foreground (Ctrl-C stops it).
	$(CARGO) build -p dispatchd
	$(KAFKA) start
	./target/debug/dispatchd --config $(DEV_CONFIG) --bootstrap-servers "$$($(KAFKA) bootstrap)" topics ensure
	@echo
	@echo "Kafka: $$($(KAFKA) bootstrap) (stop it with: make kafka-down)"
	@echo "Admin API: http://127.0.0.1:8080 (tokens dev-token for acc_demo, ops-token for operators)"
	@echo "Metrics:   http://127.0.0.1:9464/metrics, /healthz, /readyz"
	@echo "Quick start: README.md, 'Your first webhook'."
	@echo
	exec ./target/debug/dispatchd --config $(DEV_CONFIG) --bootstrap-servers "$$($(KAFKA) bootstrap)" all

test: ## Run every test; starts a broker if none runs on its port, and stops what it started.
	$(CARGO) build --workspace --all-targets
	$(WITH_KAFKA) $(CARGO) test --workspace --no-fail-fast -- --test-threads=$(TEST_THREADS)

test-unit: ## Unit tests only (no broker needed).
	$(CARGO) test --workspace --lib --bins

lint: ## rustfmt check and clippy with warnings as errors.
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code.
	$(CARGO) fmt --all

bench: ## End-to-end benchmark of the real processes: baseline limits, throughput, latency (1k and 5k events/s), head-of-line, burst; JSON in bench/results/ (about 16 minutes: the burst alone may wait its 5).
	$(CARGO) build --release -p dispatchd -p dispatch-bench
	$(WITH_KAFKA) ./target/release/dispatch-bench e2e $(BENCH_ARGS)
	$(MAKE) bench-fairness

bench-fairness: ## Tenant fairness: account B's deliveries/s with account A's 50 endpoints hanging (each asking for 64 in flight) vs B alone, at 2000 tasks/s, in-process sender (under a minute once built).
	$(CARGO) build --release -p dispatch-bench
	$(WITH_KAFKA) ./target/release/dispatch-bench sender --tenants --hang-fraction 0.25 --rate 2000 --tasks $(FAIRNESS_TASKS) --http-timeout-ms 30000 --hanging-idle
	$(WITH_KAFKA) ./target/release/dispatch-bench sender --tenants --hang-fraction 0.25 --rate 2000 --tasks $(FAIRNESS_TASKS) --http-timeout-ms 30000

bench-quick: ## The same scenarios, short (under 2 minutes once built): a smoke test of the benchmark.
	$(CARGO) build --release -p dispatchd -p dispatch-bench
	$(WITH_KAFKA) ./target/release/dispatch-bench e2e --quick $(BENCH_ARGS)

bench-burst: bench-deps ## Only the burst: 60,000 events published at once to 30 endpoints served by nginx, through the real dispatchd processes; BURST_ARGS adds flags (--quick, --burst-events N).
	$(CARGO) build --release -p dispatchd -p dispatch-bench
	$(WITH_KAFKA) ./target/release/dispatch-bench e2e --scenarios burst --nginx $(BURST_ARGS)

bench-dev: bench-deps ## The user's shape: one `dispatchd all` on deploy/dev/dispatchd.toml as it is, nginx receiving: throughput, latency at 200 and 1,000 events/s, burst; JSON in bench/results/e2e-dev-<time>.json (the burst alone may wait its 5 minutes; BENCH_DEV_ARGS adds flags, e.g. --quick).
	$(CARGO) build --release -p dispatchd -p dispatch-bench
	$(WITH_KAFKA) ./target/release/dispatch-bench e2e --shape dev --dev-config $(DEV_CONFIG) --nginx --scenarios throughput,latency,burst --rates 200,1000 $(BENCH_DEV_ARGS)

# Debian puts nginx in /usr/sbin, which not every PATH has; the bench looks there too.
bench-deps: ## Install what the benchmarks need besides the build: nginx (the burst's receiver that is not ours), with apt-get when it is missing.
	@if command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; then echo "bench-deps: nginx is installed"; else apt-get update && apt-get install -y nginx; fi

faults: ## The fault suite: kill -9, broker restart, loss of 1 of 3 brokers, DLQ + replay, scale-out/in, garbage; each ends with a ledger check (lost = 0).
	$(CARGO) build --release -p dispatchd -p dispatch-bench
	$(WITH_KAFKA) ./target/release/dispatch-bench faults $(FAULT_ARGS)

bench-fanout: ## Fan-out throughput (1,000 subscriptions, fan-out 3, 1 KiB events); EVENTS=100000 by default.
	$(CARGO) build --release -p dispatch-bench
	$(WITH_KAFKA) ./target/release/dispatch-bench fanout --events $${EVENTS:-100000}

bench-sender: ## Sender: healthy deliveries/s and latency at RATE (2000/s), without and with 10% hanging endpoints.
	$(CARGO) build --release -p dispatch-bench
	$(WITH_KAFKA) bash -c './target/release/dispatch-bench sender --rate $${RATE:-2000} --tasks $${TASKS:-40000} && ./target/release/dispatch-bench sender --rate $${RATE:-2000} --tasks $${TASKS:-40000} --hang-fraction 0.1'

# The Helm chart's check. helm is built from its Go module into .cache/bin on first use (a few
# minutes on 2 cores; the Go module proxy serves it) and PyYAML comes from PyPI when missing.
HELM_VERSION := v3.22.0
HELM := .cache/bin/helm
PYYAML_VERSION := 6.0.3
.PHONY: helm-check
helm-check: ## Lint and render the Helm chart (default and ci/ values), check the manifests against dispatchd's own view of the rendered config.
	@if [ ! -x $(HELM) ] || [ "$$(cat $(HELM).version 2>/dev/null)" != "$(HELM_VERSION)" ]; then \
	  echo "building helm $(HELM_VERSION) into .cache/bin (first time only, a few minutes)"; \
	  GOBIN=$(CURDIR)/.cache/bin go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION); \
	  echo $(HELM_VERSION) > $(HELM).version; \
	fi
	@python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --user --quiet pyyaml==$(PYYAML_VERSION) \
	  || python3 -m pip install --quiet pyyaml==$(PYYAML_VERSION)
	$(CARGO) build -p dispatchd
	python3 deploy/helm/check-chart.py --helm $(HELM) --dispatchd target/debug/dispatchd helm/posternity-dispatch

# Prometheus' own checks of deploy/prometheus (not part of `make test`: promtool is built from its
# Go module into .cache/bin on first use, about 20 minutes on 2 cores). `make test` checks the
# same files' metric names against the catalogue without it (crates/dispatch-telemetry/tests).
PROMTOOL_VERSION := v0.316.0
PROMTOOL := .cache/bin/promtool
.PHONY: promtool-check
promtool-check: ## promtool: check the scrape config and alert rules, and run the alerts' unit tests.
	@if [ ! -x $(PROMTOOL) ] || [ "$$(cat $(PROMTOOL).version 2>/dev/null)" != "$(PROMTOOL_VERSION)" ]; then \
	  echo "building promtool $(PROMTOOL_VERSION) into .cache/bin (first time only, about 20 minutes)"; \
	  GOBIN=$(CURDIR)/.cache/bin go install github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_VERSION); \
	  echo $(PROMTOOL_VERSION) > $(PROMTOOL).version; \
	fi
	$(PROMTOOL) check config deploy/prometheus/prometheus.yml
	$(PROMTOOL) test rules deploy/prometheus/alerts_test.yml

kafka-up: ## Start the local single-node Kafka (fetches it on first use).
	$(KAFKA) start

kafka-down: ## Stop the Kafka this project started.
	$(KAFKA) stop

kafka-status: ## Is the local Kafka running?
	$(KAFKA) status

kafka-logs: ## Tail the broker log.
	$(KAFKA) logs

clean: ## Remove build output and the broker's runtime files (not the cached Kafka jars).
	-$(KAFKA) stop
	$(CARGO) clean
	rm -rf .run
