"""Dynamic batching: a pure core (:mod:`.core`, :mod:`.slo`) and a threaded shell (:mod:`.batcher`)."""

from serving.batching.batcher import Batcher, make_runner
from serving.batching.core import Batch, BatcherCore, Poll, Ticket
from serving.batching.runner import DirectRunner, Runner
from serving.batching.slo import AimdController

__all__ = ["AimdController", "Batch", "Batcher", "BatcherCore", "DirectRunner", "Poll",
           "Runner", "Ticket", "make_runner"]
