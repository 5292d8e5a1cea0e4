"""The built-in runs plugin (entry point ``runs`` of the ``mmalign`` group): the ``local`` run
store, which keeps a run in ``output_dir`` on a file system (:mod:`mmalign_runs.store`).

    store.py          the store the loop calls (mmalign/run_store.py)
    checkpoint.py     atomic checkpoints, their layout, final/
    checkpoint_verify.py  the manifest check before a checkpoint is trusted
    run_identity.py   the settings a resume must match; the folder's lock
    sharded_state.py  FSDP2 model and optimizer state on disk
    metrics_file.py   metrics.jsonl
    output_dir.py     the output folder: its lock's name, a fresh one (--overwrite)
    safe_files.py     atomic writes, a failed write as one error with the fix, fsync
    optimizer_state.py  an optimizer's state as safetensors tensors plus JSON
"""

from mmalign.hookspecs import hookimpl


@hookimpl
def mmalign_register_run_stores(register) -> None:
    from mmalign_runs.run_identity import check_output_dir
    from mmalign_runs.store import LocalRunStore

    register("local", LocalRunStore, check=check_output_dir)
