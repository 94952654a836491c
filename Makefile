# Two commands set everything up on a fresh machine: `make dev` and `make test`.
SHELL := /bin/bash
export WRANGLER_SEND_METRICS := false
export CARGO_TERM_COLOR := never

.PHONY: dev test tools worker deploy bundle-check test-native test-e2e bench bench-smoke soak clean

.dev.vars:
	@printf 'TWILL_ALLOW_ANONYMOUS=true\nTWILL_BATON_KEY=%s\n' "$$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" > $@
	@echo "wrote .dev.vars (local settings: anonymous access, a baton key)"

tools:
	@bash scripts/bootstrap.sh

worker: tools
	@bash scripts/build-worker.sh

# Build the Worker and serve it locally with local R2 (state in .wrangler/state). Local
# settings live in .dev.vars (made once): anonymous access, and a key for Hrana batons.
dev: worker .dev.vars
	@echo
	@echo "TwillDB Edge on http://127.0.0.1:8787  -- try:"
	@echo "  curl -s -X POST http://127.0.0.1:8787/v1/db/demo/query -H 'content-type: application/json' \\"
	@echo "       -d '{\"sql\": \"SELECT sqlite_version() AS v, 40 + ? AS answer\", \"params\": [2]}'"
	@echo
	cd ts && npx wrangler dev --config ../wrangler.toml --ip 127.0.0.1 --port 8787 --persist-to ../.wrangler/state

# Every test: native unit and simulation tests, the wasm build and the bundle wrangler would
# upload, end-to-end tests in workerd.
test: tools
	cargo test --quiet
	cargo test --quiet -p worker-engine --lib
	$(MAKE) --no-print-directory worker
	$(MAKE) --no-print-directory bundle-check
	$(MAKE) --no-print-directory test-e2e
	$(MAKE) --no-print-directory bench-smoke

# Build the release Worker and deploy it with wrangler (see README: Deploying to Cloudflare).
deploy: worker
	cd ts && npx wrangler deploy --config ../wrangler.toml

# The exact bundle `wrangler deploy` would upload: it must build, hold only what runs, and
# stay within the size budget.
bundle-check:
	@bash scripts/check-bundle.sh

# Every benchmark, bounded in time, loopback only: writes benches/RESULTS.md.
bench: worker
	bash benches/run.sh

# A tiny run of the whole benchmark harness (part of `make test`, so it cannot rot).
bench-smoke:
	TWILL_BENCH_SMOKE=1 bash benches/run.sh

# Long runs, not part of `make test`: 100,000 crash-gate seeds on every core, 20,000 seeds of
# restores, forks and deletions under faults, then 100,000 HTTP fuzz cases against the Worker
# in workerd; each prints its seed and a progress line.
soak: worker
	cargo run -q -p twill-tests --bin crash_soak -- $${TWILL_SOAK_SEEDS:-100000}
	TWILL_HISTORY_SEEDS=$${TWILL_SOAK_HISTORY_SEEDS:-20000} cargo test -q -p twill-tests --test history_faults -- --nocapture
	cd ts && TWILL_FUZZ_RUNS=$${TWILL_SOAK_FUZZ:-100000} TWILL_FUZZ_SEED=$${TWILL_FUZZ_SEED:-$$(date +%s)} \
	  node --test --test-concurrency=1 e2e/fuzz.test.mjs

test-native:
	cargo test

# The TypeScript client (type-checked, with declarations in ts/dist), then the e2e tests.
test-e2e:
	cd ts && npx tsc -p tsconfig.json
	cd ts && node --test --test-concurrency=1 e2e/

clean:
	rm -rf target build .wrangler ts/node_modules
