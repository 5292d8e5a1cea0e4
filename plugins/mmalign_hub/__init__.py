"""The built-in hub plugin (entry point ``hub`` of the ``mmalign`` group): the model card every
``final/`` holds (``README.md``), ``mmalign push RUN_DIR REPO_ID`` and the ``push_to_hub`` callback
that ``train.push_to_hub`` turns on, both uploading a run's ``final/`` and its model card through
huggingface_hub."""

from mmalign.hookspecs import hookimpl
from mmalign_hub.card import write_final_card
from mmalign_hub.push import PushCallback, add_push_arguments, check_push_config, push_command, push_run


@hookimpl
def mmalign_register_commands(register):
    register("push", push_command, arguments=add_push_arguments,
             help="upload a run's final/ (with its model card) to a Hugging Face Hub model repository")


@hookimpl
def mmalign_register_final_files(register):
    register("model_card", write_final_card)  # final/README.md


@hookimpl
def mmalign_register_callbacks(register):
    register("push_to_hub", PushCallback, check=check_push_config, implied_by="train.push_to_hub")


__all__ = ["PushCallback", "push_run"]
