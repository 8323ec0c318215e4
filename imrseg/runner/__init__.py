"""Folder runs: `run_folder(RunSettings(...))` segments a set of queries into an
output folder, resumably, and records it in results.jsonl.

settings  RunSettings, checked before any model loads
folder    the run from start to end
identity  the fingerprint of what shapes a mask, computed without loading a model
batches   the loop: background decoding, batched prediction, atomic outputs
writing   a finished query's files (`OutputOptions`), the mask last
(results.jsonl, its rows and what they prove, is `imrseg.outputs.results`)"""
from .writing import OutputOptions
from .folder import run_folder
from ..outputs.results import RESULTS_FILE, Outcome, Summary
from .settings import ClassSpec, RunSettings

__all__ = ["RESULTS_FILE", "ClassSpec", "OutputOptions", "Outcome", "RunSettings", "Summary", "run_folder"]
