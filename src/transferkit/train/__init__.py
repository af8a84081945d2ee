"""Training and feature extraction machinery shared by every strategy.

``trainer.Trainer`` is the one training loop, given a model, its ``optim.ParamGroup``s, a
``config.TrainConfig``, data from ``batches`` (a backbone's inputs or ready tensors), the
``trainer.Hooks`` and ``config.RunSettings``; ``checkpoint`` makes it resumable, ``sampler``
orders its batches. ``cache`` and ``prefix`` run frozen layers once instead of every epoch;
``device`` resolves where and in which precision everything runs.
"""
