# One task runner for people and CI. `make run` and `make test` work on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
CACHE ?= $(or $(EVENTSTORE_CACHE_DIR),$(HOME)/.cache/eventstore)
HELM_VERSION := v3.22.0
HELM := $(CACHE)/bin/helm-$(HELM_VERSION)
BUF_VERSION := v1.75.0
BUF := $(CACHE)/bin/buf-$(BUF_VERSION)
# Prometheus 3.16.0: its Go module tags 3.x releases as v0.3xx.y.
PROMTOOL_VERSION := v0.316.0
PROMTOOL := $(CACHE)/bin/promtool-$(PROMTOOL_VERSION)
# The Prometheus operator's CRDs (ServiceMonitor, PodMonitor, PrometheusRule): the chart
# checks validate those objects against them, as Kubernetes' own schemas do not know them.
PROMETHEUS_OPERATOR_VERSION := v0.85.0
CRDS := $(CACHE)/crds/prometheus-operator-$(PROMETHEUS_OPERATOR_VERSION)
# The Go and TypeScript clients (clients/): protoc plugins pinned, built or installed once.
# protoc-gen-go matches the google.golang.org/protobuf runtime in clients/go/go.mod.
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO := $(CACHE)/bin/protoc-gen-go-$(PROTOC_GEN_GO_VERSION)
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
PROTOC_GEN_GO_GRPC := $(CACHE)/bin/protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION)
GO_MODULE := github.com/example/eventstore/clients/go
# Go packages of the protos we import: our own, and googleapis' HTTP annotations (used by the
# HTTP gateway) from genproto, so no go_package option is needed in our protos.
GO_PROTO_MAP := Meventstore/v1/eventstore.proto=$(GO_MODULE)/eventstore/v1;eventstorev1,Mgoogle/api/annotations.proto=google.golang.org/genproto/googleapis/api/annotations,Mgoogle/api/http.proto=google.golang.org/genproto/googleapis/api/annotations
TS_CLIENT := clients/typescript
# npm ci's marker; its downloads are cached in $(CACHE)/npm, outside the work tree.
TS_MODULES := $(TS_CLIENT)/node_modules/.package-lock.json
NPM := npm --cache $(CACHE)/npm --no-audit --no-fund
GO_EXAMPLE := build/clients/eventstore-go-example
TS_EXAMPLE := $(TS_CLIENT)/dist/example.js

.DEFAULT_GOAL := help
.PHONY: help venv protos openapi services-up services-down services-status cluster-up cluster-down migrate \
        run test test-unit test-faults \
        test-integration lint format bench clean chart-check package-check proto-check proto-release \
        monitoring-check clients

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml constraints.txt
	@echo "[make] creating $(VENV) and installing pinned dependencies (constraints.txt)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade 'pip>=24'
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

venv: $(INSTALLED)  ## create the virtualenv with the pinned dependencies

# One protoc for every language: the one grpcio-tools ships, with its well-known types.
# $(call go-stubs,DIR) and $(call ts-stubs,DIR) write the Go and TypeScript stubs under DIR.
# The TypeScript client also gets google.rpc's Status and ErrorInfo (to read error details),
# from the .proto files googleapis-common-protos installs in the venv.
go-stubs = $(PY) -m grpc_tools.protoc -I protos \
	  --plugin=protoc-gen-go=$(PROTOC_GEN_GO) --plugin=protoc-gen-go-grpc=$(PROTOC_GEN_GO_GRPC) \
	  --go_out=$(1) --go_opt="module=$(GO_MODULE),$(GO_PROTO_MAP)" \
	  --go-grpc_out=$(1) --go-grpc_opt="module=$(GO_MODULE),$(GO_PROTO_MAP)" \
	  protos/eventstore/v1/*.proto
ts-stubs = $(PY) -m grpc_tools.protoc -I protos -I "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
	  --plugin=protoc-gen-ts_proto=$(TS_CLIENT)/node_modules/.bin/protoc-gen-ts_proto \
	  --ts_proto_out=$(1) --ts_proto_opt=outputServices=grpc-js,env=node,esModuleInterop=true \
	  protos/eventstore/v1/*.proto google/rpc/status.proto google/rpc/error_details.proto

# protos/google/api (vendored, for the google.api.http options) is on the include path; its
# Python code is googleapis-common-protos', so it is not generated here.
protos: $(INSTALLED) $(PROTOC_GEN_GO) $(PROTOC_GEN_GO_GRPC) $(TS_MODULES)  ## regenerate the Python (eventstore/v1), Go and TypeScript (clients/) stubs and docs/openapi.json from protos/
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m grpc_tools.protoc -I protos \
	  --python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. \
	  protos/eventstore/v1/*.proto
	$(call go-stubs,clients/go)
	rm -rf $(TS_CLIENT)/src/gen && mkdir -p $(TS_CLIENT)/src/gen
	$(call ts-stubs,$(TS_CLIENT)/src/gen)
	$(MAKE) openapi

openapi: $(INSTALLED)  ## regenerate docs/openapi.json (the REST face's) from the google.api.http options
	$(PY) -m eventstore.rest.openapi > docs/openapi.json.tmp
	mv docs/openapi.json.tmp docs/openapi.json

services-up: $(INSTALLED)  ## start Cassandra, Kafka, OpenSearch on loopback (downloads jars once)
	$(PY) -m devstack up

services-down:  ## stop exactly the services services-up and cluster-up started
	$(PYTHON) -m devstack down

cluster-up: $(INSTALLED)  ## the fault tests' cluster: 3 Cassandra nodes, 3 Kafka brokers on 127.0.0.2-4
	$(PY) -m devstack up cluster

cluster-down:  ## stop the fault tests' cluster only
	$(PYTHON) -m devstack down cluster

services-status: $(INSTALLED)  ## per service: up/down, address, pid, memory, log file
	@$(PY) -m devstack status || true
	@$(PY) -m devstack status cluster || true

migrate: services-up  ## keyspace and tables, index template, dead-letter topic (idempotent)
	$(PY) -m eventstore.migrate

run: migrate  ## server + indexer on the local stack, in the foreground (Ctrl-C stops them)
	exec $(PY) -m devstack.run

lint: $(INSTALLED) proto-check  ## proto-check, ruff and mypy (strict; generated code excluded)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(INSTALLED)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The proto governance tests run here only once buf is built (make proto-check builds it).
test-unit: $(INSTALLED)  ## unit tests only (no services, network or helm)
	$(if $(wildcard $(BUF)),EVENTSTORE_BUF=$(BUF)) $(PY) -m pytest tests/unit

package-check: $(INSTALLED)  ## install the distribution from constraints.txt as the image does (needs the package index)
	$(PY) -m pytest tests/packaging

$(HELM):  ## helm, built once from the Go module proxy (pinned), for the chart checks
	@echo "[make] building helm $(HELM_VERSION) with go install (once; cached in $(CACHE)/bin)"
	mkdir -p $(CACHE)/bin/build
	GOBIN=$(CACHE)/bin/build go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	mv $(CACHE)/bin/build/helm $@

$(BUF):  ## buf, built once from the Go module proxy (pinned), for the proto checks
	@echo "[make] building buf $(BUF_VERSION) with go install (once; cached in $(CACHE)/bin)"
	mkdir -p $(CACHE)/bin/build
	GOBIN=$(CACHE)/bin/build go install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
	mv $(CACHE)/bin/build/buf $@

# The API as last released is the checked-in snapshot protos/released, not a git ref: CI runs
# in a fresh clone of main, where main compared with itself would find nothing.
proto-check: $(BUF)  ## buf lint, and buf breaking against the API as last released (protos/released)
	$(BUF) lint
	$(BUF) breaking --against protos/released

# Refuses a protos/ that breaks the last release: a break needs a new package (eventstore.v2).
proto-release: proto-check  ## at a release: protos/ becomes the released API proto-check compares against
	find protos/released -mindepth 1 -maxdepth 1 ! -name buf.yaml -exec rm -rf {} +
	find protos -mindepth 1 -maxdepth 1 ! -name released -exec cp -R {} protos/released/ \;

$(PROMTOOL):  ## promtool, built once from the Go module proxy (pinned), for the alerting rules
	@echo "[make] building promtool $(PROMTOOL_VERSION) with go install (once; cached in $(CACHE)/bin)"
	mkdir -p $(CACHE)/bin/build
	GOBIN=$(CACHE)/bin/build go install github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_VERSION)
	mv $(CACHE)/bin/build/promtool $@

$(CRDS):  ## the Prometheus operator's CRDs, pinned, from the Go module proxy (checksum-verified)
	@echo "[make] fetching the Prometheus operator $(PROMETHEUS_OPERATOR_VERSION) CRDs (once; cached in $(CACHE)/crds)"
	rm -rf $@.build && mkdir -p $@.build
	dir=$$(go mod download -json github.com/prometheus-operator/prometheus-operator@$(PROMETHEUS_OPERATOR_VERSION) \
	  | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p') && \
	for kind in servicemonitors podmonitors prometheusrules; do \
	  cp "$$dir/example/prometheus-operator-crd/monitoring.coreos.com_$$kind.yaml" $@.build/ || exit 1; \
	done
	chmod u+w $@.build/* && mv $@.build $@

chart-check: $(INSTALLED) $(HELM) $(CRDS)  ## helm lint/template with both value sets, validated against Kubernetes schemas and the CRDs
	EVENTSTORE_HELM=$(HELM) EVENTSTORE_CRDS=$(CRDS) $(PY) -m pytest tests/chart

monitoring-check: $(INSTALLED) $(PROMTOOL)  ## promtool check + unit tests of the alerting rules; rules and dashboard use only exported metrics
	EVENTSTORE_PROMTOOL=$(PROMTOOL) $(PY) -m pytest tests/monitoring tests/unit/test_monitoring.py

$(PROTOC_GEN_GO):  ## protoc-gen-go, built once from the Go module proxy (pinned), for make protos
	@echo "[make] building protoc-gen-go $(PROTOC_GEN_GO_VERSION) with go install (once; cached in $(CACHE)/bin)"
	mkdir -p $(CACHE)/bin/build
	GOBIN=$(CACHE)/bin/build go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	mv $(CACHE)/bin/build/protoc-gen-go $@

$(PROTOC_GEN_GO_GRPC):  ## protoc-gen-go-grpc, built once from the Go module proxy (pinned), for make protos
	@echo "[make] building protoc-gen-go-grpc $(PROTOC_GEN_GO_GRPC_VERSION) with go install (once; cached in $(CACHE)/bin)"
	mkdir -p $(CACHE)/bin/build
	GOBIN=$(CACHE)/bin/build go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	mv $(CACHE)/bin/build/protoc-gen-go-grpc $@

$(TS_MODULES): $(TS_CLIENT)/package.json $(TS_CLIENT)/package-lock.json
	cd $(TS_CLIENT) && $(NPM) ci
	@touch $@

# The checked-in stubs must be those of protos/ (users copy them): regenerated aside and
# compared. go build and tsc are incremental (Go's build cache, tsc's output): they run every time.
clients: $(INSTALLED) $(PROTOC_GEN_GO) $(PROTOC_GEN_GO_GRPC) $(TS_MODULES)  ## check clients/ holds the stubs of protos/, build the Go and TypeScript examples make test runs
	rm -rf build/clients/stubs && mkdir -p build/clients/stubs/go build/clients/stubs/ts
	$(call go-stubs,build/clients/stubs/go)
	$(call ts-stubs,build/clients/stubs/ts)
	diff -r build/clients/stubs/go/eventstore clients/go/eventstore -x annotations.go \
	  && diff -r build/clients/stubs/ts $(TS_CLIENT)/src/gen \
	  || { echo "[make] clients/ does not hold the stubs of protos/: run make protos"; exit 1; }
	cd clients/go && go build -o $(abspath $(GO_EXAMPLE)) ./cmd/example
	cd $(TS_CLIENT) && node_modules/.bin/tsc -p .

# Tests mostly wait on the services: three workers keep two cores busy (see docs/testing.md).
TEST_WORKERS ?= 3

# The node-fault tests run after the rest, alone: they start, kill and restart JVMs, which
# on two cores starved the other workers (a connect timed out) and slowed the faults' own
# recovery past the clients' retries.
test: lint services-up $(HELM) $(BUF) $(CRDS) $(PROMTOOL) clients  ## lint, then the whole suite (chart, proto checks, alerting rules, Go and TypeScript clients and node faults included) against the real services
	EVENTSTORE_HELM=$(HELM) EVENTSTORE_BUF=$(BUF) EVENTSTORE_CRDS=$(CRDS) EVENTSTORE_PROMTOOL=$(PROMTOOL) \
	  EVENTSTORE_GO_EXAMPLE=$(abspath $(GO_EXAMPLE)) EVENTSTORE_TS_EXAMPLE=$(abspath $(TS_EXAMPLE)) \
	  $(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=20 --ignore=tests/cluster
	$(MAKE) test-faults

test-faults: cluster-up  ## the node-fault tests alone, on the three-node cluster
	$(PY) -m pytest tests/cluster --durations=10

bench: migrate  ## append, publication, indexing and query figures against the real stack
	$(PY) -m benchmarks.publication --soak 300000
	$(PY) -m benchmarks.append
	$(PY) -m benchmarks.append --auth --sustain-seconds 0
	$(PY) -m benchmarks.quotas
	$(PY) -m benchmarks.quotas --kind read --quota 0 --requests-quota 100
	$(PY) -m benchmarks.quotas --kind subscribe --quota 0
	$(PY) -m benchmarks.quotas --kind unauthenticated --quota 0
	$(PY) -m benchmarks.quotas --kind bytes --quota 0
	$(PY) -m benchmarks.quotas --kind bytes --quota 0 --bytes-quota 4194304
	$(PY) -m benchmarks.quotas --kind inflight --quota 0
	$(PY) -m benchmarks.quotas --kind metadata --quota 0
	$(PY) -m benchmarks.quotas --kind events --quota 0
	$(PY) -m benchmarks.subscriptions
	$(PY) -m benchmarks.query
	$(PY) -m benchmarks.replay
	$(PY) -m benchmarks.rest
	$(PY) -m benchmarks.schemas

clean:  ## remove the virtualenv (the stack's data and the download cache stay)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
