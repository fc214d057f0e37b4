"""The stages of a search, each one job behind one small interface; ``PlanSearcher``
(``controller.searcher``) sequences them, records every trial in the ledger and persists.

- ``FixedPlans``: plans known before the search, trained in order and never learned from:
  the hand-set **baselines** and the **tuned recipes** (one method at every site on a grid).
- ``SampledPlans``: the **sampled plans**: drawn from the searcher's policy, redrawn when
  already trained, started from the best tuned recipe.
- ``TopKFinal``: the **final stage** as a ``FinalStage``: the ``contenders`` (the top-k
  sampled plans, every baseline and each tuned method's best) re-trained with every fresh
  seed. Another ``FinalStage`` (a race) replaces it without touching the sequencer.
"""

from controller.stages.base import FinalStage, FinalTrial, Proposal
from controller.stages.fixed import FixedPlans
from controller.stages.sampled import SampledPlans
from controller.stages.top_k import TopKFinal, contenders

__all__ = ["Proposal", "FinalTrial", "FinalStage", "FixedPlans", "SampledPlans", "TopKFinal", "contenders"]
