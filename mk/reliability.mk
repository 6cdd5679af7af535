# Reliability and security (issue 6). The tests are cargo tests of s3mount-tests
# (tests/tests/reliability_*.rs, security_*.rs), so `make test` already runs them; these targets
# run them on their own. Each test prints one `reliability:` line; needs root and /dev/fuse.
#   make reliability-summary   every reliability/security test, then only their summary lines
#   make soak                  16 readers + 4 writers on one mount for SOAK_SECS (default 60)
.PHONY: reliability-build reliability-summary soak

SOAK_SECS ?= 60
RELIABILITY_TESTS := reliability_s3_faults reliability_shutdown reliability_concurrency \
	security_sidecar_injection security_no_secret_in_output

reliability-build:
	$(CARGO) build --workspace --bins

reliability-summary: reliability-build ## run the reliability/security tests, print their summary lines
	@set -o pipefail; $(CARGO) test -p s3mount-tests $(addprefix --test ,$(RELIABILITY_TESTS)) \
		-- --nocapture --test-threads=4 2>&1 | tee /tmp/s3mount-reliability.out \
		| grep -E '^reliability: |^test result: ' ; rc=$$?; \
	grep -o '^reliability: .*' /tmp/s3mount-reliability.out | awk '{for (i = 3; i <= NF; i++) { \
		split($$i, kv, "="); if (kv[1] == "faults_injected") f += kv[2]; if (kv[1] == "bytes_verified") b += kv[2] } } \
		END { printf "reliability: total faults_injected=%d bytes_verified=%d (%.1f MiB)\n", f, b, b / 1048576 }'; \
	exit $$rc

soak: reliability-build ## 16 readers + 4 writers on one mount for SOAK_SECS (default 60) seconds
	S3MOUNT_SOAK_SECS=$(SOAK_SECS) $(CARGO) test -p s3mount-tests --test reliability_concurrency \
		-- --nocapture 2>&1 | grep -E '^reliability: |^concurrency: |^test |panicked|^test result: '
