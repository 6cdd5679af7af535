# Install artefacts: static checks of deploy/, the Dockerfiles and the shell scripts (part of
# `make test`), and the kind end-to-end suite (needs Docker and kind; not part of `make test`).
.PHONY: static-checks e2e-kind images

TEST_SUITES += static-checks

static-checks: ## kustomize + kubernetes-validate, hadolint, shellcheck, manifests vs webhook defaults
	@bash scripts/install-k8s-tools.sh
	@bash tests/e2e/static-checks.sh

images: ## build the webhook and sidecar images (needs Docker)
	docker build -f Dockerfile.webhook -t s3mount/webhook:dev .
	docker build -f Dockerfile.sidecar -t s3mount/sidecar:dev .

e2e-kind: ## the kind end-to-end suite (needs Docker, kind and kubectl; creates and deletes a cluster)
	@bash tests/e2e/kind.sh
