# Webhook suites (owned with webhook/): schema validation of mutated pods, fuzz smoke run, load bench.
WEBHOOK_FUZZ_SECONDS ?= 20
WEBHOOK_BENCH_SECONDS ?= 10

.PHONY: webhook-schema fuzz-webhook fuzz-webhook-long webhook-load bench-webhook
webhook-schema: ## mutated fixture pods vs kubernetes-validate --strict (oldest and newest supported versions)
	$(CARGO) test -p s3mount-webhook --test schema -- --ignored

fuzz-webhook: ## fuzz AdmissionReview parsing and mutation (WEBHOOK_FUZZ_SECONDS, default 20)
	@bash webhook/scripts/fuzz.sh $(WEBHOOK_FUZZ_SECONDS)

fuzz-webhook-long: ## fuzz with the address sanitizer for 10 minutes (WEBHOOK_FUZZ_SECONDS to change)
	@FUZZ_SANITIZER=address bash webhook/scripts/fuzz.sh $${WEBHOOK_FUZZ_SECONDS:-600}

webhook-load: ## 10,000 requests on 256 TLS connections, certificate rotation under load, oversized/slow/idle clients
	@bash webhook/scripts/load-attack.sh

bench-webhook: ## load figures: webhook over TLS vs a bare axum+rustls endpoint (oha), RSS; writes webhook/BENCHMARK.md
	@bash scripts/install-webhook-tools.sh --bench
	@bash webhook/scripts/bench.sh $(WEBHOOK_BENCH_SECONDS)

TEST_SUITES += webhook-schema fuzz-webhook webhook-load
