"""The built-in data plugin (entry point ``data`` of the ``mmalign`` group): where a run's
records come from, and how they become batches. It registers three data sources
(``mmalign_register_data_sources``): ``data.source`` names one, and with ``auto`` the run asks for
``prompts`` (an online algorithm), ``streamed`` (``data.streaming: true``) or ``files``. A plugin
registers another source under its own name, or replaces one of these.

    sources.py        the three sources: files read whole, streamed, an online run's prompts
    reading.py        a data path -> Records, through the reader of its format; data.columns
    preparing.py      the modality plugin's prepare on every record; the data report
    batch_stream.py   the offline batch stream (epochs, processes, collate randomness)
    streaming.py      data.streaming: records read, shuffled and prepared as training reaches them
    prefetch.py       data.prefetch: micro-batches collated ahead by a thread
"""

from mmalign.hookspecs import hookimpl


@hookimpl
def mmalign_register_data_sources(register) -> None:
    from mmalign_data.sources import check_files, check_prompts, check_streamed, files, prompts, streamed

    register("files", files, check=check_files)
    register("streamed", streamed, check=check_streamed)
    register("prompts", prompts, check=check_prompts)
