demo:
	bash tools/demo.sh $(ARGS)

test:
	bash tools/test.sh

# Execute every notebook (slow cells skipped) and render the static site _docs/ (open _docs/index.html)
docs:
	bash tools/venv.sh dev
	PYTHONHASHSEED=0 .venv/bin/python tools/build_docs.py

.PHONY: demo test docs
