"""The stages of a search, each one job behind one small interface; ``PlanSearcher``
(``controller.searcher``) sequences them, records every trial in the ledger and persists.

- ``FixedPlans``: plans known before the search, trained in order and never learned from:
  the hand-set **baselines** and the **tuned recipes** (one method at every site on a grid).
- ``SampledPlans``: the **sampled plans**: drawn from the searcher's policy, redrawn when
  already trained, started from the best tuned recipe.
- ``RaceFinal``: the **final stage** as a ``FinalStage``: the ``contenders`` (the top-k
  sampled plans, every baseline and each tuned method's best) race on shared fresh seeds
  within a budget, then the winner is confirmed on seeds the race never used
  (``controller.race``). ``TopKFinal``: every contender on every fresh seed (the fixed stage
  of run folders made before the race).
"""

from controller.stages.base import FinalStage, FinalTrial, Proposal
from controller.stages.fixed import FixedPlans
from controller.stages.race_final import RaceFinal
from controller.stages.sampled import SampledPlans
from controller.stages.top_k import TopKFinal, contenders

__all__ = [
    "Proposal",
    "FinalTrial",
    "FinalStage",
    "FixedPlans",
    "SampledPlans",
    "RaceFinal",
    "TopKFinal",
    "contenders",
]
