"""emergent: supervised maximum likelihood vs AlphaGo-style self-improvement, on equal footing.

Subpackages: ``envs`` (tasks, tokenizer, Gymnasium envs) <- ``agents`` (Transformer,
learners) <- ``platform`` (configs, runtimes, checkpoints, TensorBoard, CLI).
"""

__version__ = "0.1.0"
