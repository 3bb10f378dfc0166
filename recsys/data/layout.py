"""The naming contract shared by the prepared-dataset writer, its readers and the models.

Kept free of polars so that training and serving hosts need only pyarrow and torch to read data.
"""

FORMAT_VERSION = 3  # of prepared datasets; bump when a file or column changes meaning
SPLITS = ("train", "valid", "test")
HISTORY_PREFIX = "hist_"  # KJT keys of history fields
CANDIDATE_PREFIX = "cand_"  # KJT keys (and samples.arrow columns) of candidate fields
