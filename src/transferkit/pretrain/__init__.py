"""Self-supervised pretraining before any label is used: masked-language-model pretraining of
text encoders (continued from a pretrained model, or from scratch with a tokenizer trained on
the corpus) and SimCLR-style contrastive pretraining of timm image backbones. Both run on the
one training loop and write a backbone folder that every command accepts as ``--backbone``.
The entry point is ``transferkit.workflows.pretrain`` (``transferkit pretrain`` on the CLI)."""
