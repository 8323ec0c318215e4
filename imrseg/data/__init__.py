"""The facts everything else stands on, with no torch: the benchmarks' class names
and folds, their list files, their images and masks, and the episodes drawn from
them as the authors draw them.

classes            class names, folds, benchmark names, the paper's steps per benchmark
lists              HSNet's list files: found, fetched, read, checked against their hashes
splits             a list file parsed into one `Split` (images and class ids), for testing and training
datasets           images and masks in each benchmark's layout
episodes           test episodes, drawn as the authors' test script draws them
training_episodes  training episodes, drawn as the authors' training loaders draw them
folder             your own classes laid out as FSS-1000
safe_pickle        pickles that may hold plain data only
"""
