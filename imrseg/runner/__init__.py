"""Folder runs: `run_folder(RunSettings(...))` segments a set of queries into an
output folder, resumably, and records it in results.jsonl.

settings  RunSettings, checked before any model loads
folder    the run from start to end
batches   the loop: background decoding, batched prediction, atomic outputs
results   results.jsonl: header, rows, and merging a distributed run's ranks"""
from .batches import OutputOptions
from .folder import run_folder
from .results import RESULTS_FILE, Outcome, Summary
from .settings import RunSettings

__all__ = ["RESULTS_FILE", "OutputOptions", "Outcome", "RunSettings", "Summary", "run_folder"]
