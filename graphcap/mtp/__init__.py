"""MTP speculative decoding under graphs: its graph specs, pre-processing, target verify and draft steps."""

from graphcap.mtp.engine import MTPEngine, Request, RunStats, SamplingOptions
from graphcap.mtp.graph_specs import mtp_graph_specs
from graphcap.mtp.preprocess import SlotRows, StepLayout, layout_rows, write_step_inputs

__all__ = [
    "MTPEngine",
    "Request",
    "RunStats",
    "SamplingOptions",
    "SlotRows",
    "StepLayout",
    "layout_rows",
    "mtp_graph_specs",
    "write_step_inputs",
]
