# Convenience wrappers; ./loadkit is the real entry point (it needs no make on a fresh machine).
.PHONY: setup run test lock lint
setup: ; ./loadkit setup
run: ; ./loadkit run
test: ; ./loadkit test
lock: ; ./loadkit lock
lint: ; ./loadkit lint
