"""MTP speculative decoding under graphs: pre-processing, target verify and draft steps."""

from graphcap.mtp.engine import MTPEngine, Request, RunStats, SamplingOptions
from graphcap.mtp.preprocess import SlotRows, StepLayout, layout_rows, write_step_inputs

__all__ = [
    "MTPEngine",
    "Request",
    "RunStats",
    "SamplingOptions",
    "SlotRows",
    "StepLayout",
    "layout_rows",
    "write_step_inputs",
]
