"""The run folder as a file format: its schema (``schema``, torch-free, so the ONNX engine can
read it) and saving / loading a model into one (``store``). Below the Classifier, which saves
and loads through it; the engines and the server, one layer up, read it too.

Import the submodule you need: this package imports nothing itself, so reading a schema never
pulls in torch."""
