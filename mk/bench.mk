# The side-by-side benchmark (issue 7): s3mount, s3fs, rclone mount and direct S3 baselines against
# `rclone serve s3` on loopback; writes bench/RESULTS.md. Not part of `make test`. Needs root.
# `make bench QUICK=1` is a smoke check with small sizes and one run (prints, writes no file).
.PHONY: bench bench-build

BENCH_ARGS ?=
ifneq ($(QUICK),)
BENCH_ARGS += --quick
endif

bench-build:
	$(CARGO) build --release -p s3mount-sidecar -p s3mount-tests --bin s3mount-sidecar --bin s3mount-s3bench
	$(CARGO) build -p s3mount-tests --bin s3mount-faultproxy

bench: ## side-by-side benchmark vs s3fs and rclone mount (QUICK=1: smoke check)
	@bash scripts/setup.sh
	$(MAKE) --no-print-directory bench-build
	.venv/bin/python bench/bench.py $(BENCH_ARGS)
