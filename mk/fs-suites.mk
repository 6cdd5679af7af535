# Standard filesystem suites on a real mount (issue 4): fsx and pjdfstest, figures printed.
TEST_SUITES += fs-suites

.PHONY: fs-suites fsx-long
fs-suites: ## fsx (10,000 ops) and pjdfstest on a real s3mount mount, with a reason for every failure
	@bash scripts/fs-suites.sh

fsx-long: ## fsx for 200,000 operations (FSX_OPS to change)
	@FSX_OPS=$${FSX_OPS:-200000} bash scripts/fs-suites.sh
