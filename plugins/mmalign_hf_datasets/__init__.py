"""Record readers built on the ``datasets`` library (entry point ``hf_datasets`` of the ``mmalign``
group): local Parquet, CSV and Arrow files, folders written by ``Dataset.save_to_disk``, and hub
datasets named ``hf://org/name``. Every row becomes a Record whose ``where`` is ``PATH:row N``
(counted from 1). ``datasets`` is imported only when one of these readers runs."""

from mmalign.hookspecs import hookimpl
from mmalign_hf_datasets.hub import HUB_SCHEME, parse_hub_id
from mmalign_hf_datasets.local import is_saved_dataset, read_arrow, read_csv, read_hf, read_parquet


@hookimpl
def mmalign_register_datasets(register):
    register("parquet", read_parquet, suffixes=(".parquet",))
    register("csv", read_csv, suffixes=(".csv",))
    register("arrow", read_arrow, suffixes=(".arrow",))
    # a save_to_disk folder (found by format: auto from its layout) or a hub dataset id
    register("hf", read_hf, folders=is_saved_dataset, schemes=(HUB_SCHEME,))


__all__ = ["is_saved_dataset", "parse_hub_id", "read_arrow", "read_csv", "read_hf", "read_parquet"]
