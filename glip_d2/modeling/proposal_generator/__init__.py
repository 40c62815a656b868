"""Proposals for the two-stage heads taken from the dense grounding head (MODEL.GLIP.PROPOSAL_SOURCE "dense")."""
from .dense_proposals import dense_head_proposals, dense_objectness

__all__ = ["dense_head_proposals", "dense_objectness"]
