"""The policy that proposes plans: an ENAS-style LSTM controller trained with REINFORCE.

Ray Tune searchers (ControllerSearcher, RandomSearcher) live in ``controller.searcher`` and
are imported from there directly, so this package imports without Ray.
"""
from controller.lstm import LSTMController
from controller.reinforce import Reinforce, ReinforceConfig, state_from_json, state_to_json

__all__ = ["LSTMController", "Reinforce", "ReinforceConfig", "state_from_json", "state_to_json"]
