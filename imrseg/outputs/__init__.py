"""What a run leaves in its output folder, and reading it back.

naming   where each query's files go under the output folder
masks    the mask, probability and CAM pictures, written atomically; a mask read back
palette  the colour of each class
overlay  the picture with its classes tinted and outlined
results  results.jsonl: one row per finished query, and what a row proves
coco     COCO annotations of a folder (`imrseg export`, `--coco`)
gallery  the review page (`imrseg gallery`, `--gallery`)
"""
