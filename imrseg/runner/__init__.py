"""Folder runs: `run_folder(RunSettings(...))` segments a set of queries into an
output folder, resumably, and records it in results.jsonl.

settings  RunSettings, checked before any model loads
folder    the run from start to end
identity  the fingerprint of what shapes a mask, computed without loading a model
batches   the loop: background decoding, batched prediction, atomic outputs
results   results.jsonl: header, rows, what they prove, merging a distributed run's ranks"""
from .writing import OutputOptions
from .folder import run_folder
from ..outputs.results import RESULTS_FILE, Outcome, Summary
from .settings import RunSettings

__all__ = ["RESULTS_FILE", "OutputOptions", "Outcome", "RunSettings", "Summary", "run_folder"]
