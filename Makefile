# Two commands do everything on a fresh machine (see README.md and docs/pipeline.md):
#   make run [EXPERIMENT=cnn_digits3_10pc]   set up .venv, then the whole pipeline for all ten seeds
#            [EXPERIMENT="E1 E2 ..."]          several experiments in turn, then one summary of them all
#            [ARGS="--methods loo,if --loo.protocol scratch --device cpu -- --model_name_or_path DIR"]
#                                             options of run_experiment.sh (see there), training arguments after --
#   make test                                set up .venv, then the tests
#   make study [ARGS=--quick]                set up .venv, then the study of docs/study.md (results/study/report.md)
PYTHON ?= python3
VENV := .venv
EXPERIMENT ?= cnn_digits3_10pc
ARGS ?=

.PHONY: run test venv study

venv: $(VENV)/.installed

$(VENV)/.installed: req.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -r req.txt
	touch $@

run: venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash run_experiment.sh $(EXPERIMENT) $(ARGS)

test: venv
	$(VENV)/bin/python -m pytest -q -n auto --maxprocesses 4 --dist loadgroup tests

study: venv
	$(VENV)/bin/python run_study.py $(ARGS)
