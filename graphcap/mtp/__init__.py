"""Speculative decoding under graphs: the one step for any target/draft pair, its specs, pre-processing, engine."""

from graphcap.mtp.engine import MTPEngine, Request, RunStats, SamplingOptions
from graphcap.mtp.graph_specs import mtp_graph_specs
from graphcap.mtp.preprocess import SlotRows, StepLayout, layout_rows, write_step_inputs
from graphcap.mtp.speculative_step import DecodingRequest, SpeculativePair, SpeculativeStep
from graphcap.mtp.tiny_pair import TinyLMPair

__all__ = [
    "DecodingRequest",
    "MTPEngine",
    "Request",
    "RunStats",
    "SamplingOptions",
    "SlotRows",
    "SpeculativePair",
    "SpeculativeStep",
    "StepLayout",
    "TinyLMPair",
    "layout_rows",
    "mtp_graph_specs",
    "write_step_inputs",
]
