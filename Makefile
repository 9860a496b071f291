demo:
	bash tools/demo.sh

test:
	bash tools/test.sh

.PHONY: demo test
