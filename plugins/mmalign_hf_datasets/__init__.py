"""Record readers built on the ``datasets`` library (entry point ``hf_datasets`` of the ``mmalign``
group): local Parquet, CSV and Arrow files, folders written by ``Dataset.save_to_disk``, and hub
datasets named ``hf://org/name``, and datasets passed to ``mmalign.train`` from Python (``memory://``). Every row becomes a Record whose ``where`` is ``PATH:row N``
(counted from 1). ``datasets`` is imported only when one of these readers runs."""

from mmalign.hookspecs import hookimpl
from mmalign.in_memory import MEMORY_SCHEME
from mmalign_hf_datasets.hub import HUB_SCHEME, parse_hub_id
from mmalign_hf_datasets.local import (
    is_saved_dataset,
    read_arrow,
    read_csv,
    read_hf,
    read_parquet,
    stream_hf,
    stream_parquet,
)
from mmalign_hf_datasets.memory import read_memory


@hookimpl
def mmalign_register_datasets(register):
    register("parquet", read_parquet, suffixes=(".parquet",), stream=stream_parquet)
    register("csv", read_csv, suffixes=(".csv",))
    register("arrow", read_arrow, suffixes=(".arrow",))
    # a save_to_disk folder (found by format: auto from its layout) or a hub dataset id
    register("hf", read_hf, folders=is_saved_dataset, schemes=(HUB_SCHEME,), stream=stream_hf)
    # train_dataset= / eval_dataset= of mmalign.train(): a datasets.Dataset or a list of dicts
    register("memory", read_memory, schemes=(MEMORY_SCHEME,))


__all__ = ["is_saved_dataset", "parse_hub_id", "read_arrow", "read_csv", "read_hf", "read_memory", "read_parquet"]
