"""The learners: the Transformer policy, the reward-and-objective network, search, and
the methods (supervised, expert iteration, policy gradient, AlphaZero, self-labelling) behind one
``Method`` interface. Importing this package registers every method in ``METHODS``."""

from . import alphazero, expert_iteration, policy_gradient, self_label, supervised
from .method import METHODS, Method, build_method, reads_key

REGISTERED = (supervised, expert_iteration, policy_gradient, alphazero, self_label)  # importing them registered them

__all__ = ["METHODS", "Method", "build_method", "reads_key"]
