"""The few-shot benchmarks, shared by `imrseg eval` and `imrseg train`.

classes     class names, folds, the paper's titles and steps (pure data)
splits      HSNet's split lists: parsed, pinned by sha256, downloaded once
safe_pickle an unpickler of plain data only: no globals, no shared containers, bounded work
            (COCO's lists are pickles)
datasets    images and masks in HSNet's layouts; ground truth as the authors read it
episodes    test episodes drawn exactly as the authors' test script
metrics     mIoU and FB-IoU as the authors compute them
cam_cache   CLIP-CAMs of (image, class) pairs, computed once and kept on disk
state       finished episodes of an evaluation, so it resumes
loop        `evaluate`: episodes in batches through the network into the metrics
"""
