"""A run's ``final/`` to a Hub model repository: ``HfApi().create_repo`` (kept if it exists), then
``upload_folder`` of ``final/`` in one commit. Before the upload the model card
(``final/README.md``) is written again from the run's ``config.yaml`` and ``metrics.jsonl``, so
that its loading code names the repository rather than a local path."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from mmalign.callbacks import Callback
from mmalign.errors import ConfigError, EnvironmentProblem


def push_run(run_dir: str | Path, repo_id: str, *, private: Optional[bool] = None,
             log: Callable[[str], None] = print) -> str:
    """Upload ``run_dir/final`` to the model repository ``repo_id``; returns its URL."""
    from huggingface_hub import HfApi

    run_dir = Path(run_dir)
    final = run_dir / "final"
    if not final.is_dir():
        raise ConfigError(f"{run_dir}: holds no final/ (a run writes it when training ends). Give the "
                          f"output_dir of a finished run.")
    check_repo_id(repo_id, "REPO_ID")
    token = require_token()
    refresh_card(run_dir, repo_id, log)
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=str(final), repo_type="model",
                          commit_message=f"mmalign: upload {run_dir.name}/final")
    except Exception as e:  # the network, the token's rights, the Hub: never the run's weights
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise EnvironmentProblem(f"pushing {final} to the Hub repository '{repo_id}' failed ({type(e).__name__}: "
                                 f"{first}). {final} is intact; push it again with `mmalign push {run_dir} "
                                 f"{repo_id}`.") from e
    log(f"pushed {final} to {url}")
    return str(url)


REPO_ID_RULE = "'name' or 'org/name' in letters, digits, '-', '_' and '.' (at most 96 characters)"


def is_repo_id(repo_id: str) -> bool:
    """A well-formed Hub repository id (huggingface_hub's own rule)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return False
    return True


def check_repo_id(repo_id: str, key: str) -> None:
    if not is_repo_id(repo_id):
        raise ConfigError(f"{key} '{repo_id}' is not a Hub repository id: {REPO_ID_RULE}.")


def check_push_config(cfg: Any) -> None:
    """``train.push_to_hub`` (the callback's ``check=``): a well-formed repository id, before anything loads."""
    from mmalign.validation import fail

    repo_id = cfg.train.push_to_hub  # unset with train.callbacks: [push_to_hub], which the callback refuses
    if repo_id and not is_repo_id(repo_id):
        raise fail(None, "train.push_to_hub", f"is '{repo_id}', not a Hub repository id: {REPO_ID_RULE}.")


def require_token() -> str:
    """The Hugging Face token (``HF_TOKEN``, or the one ``hf auth login`` stored); a ConfigError
    without one, said before anything is uploaded (and, for train.push_to_hub, before training)."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise ConfigError("Pushing to the Hugging Face Hub needs a token with write access: log in with "
                          "`hf auth login`, or set HF_TOKEN (tokens: https://huggingface.co/settings/tokens).")
    return token


def refresh_card(run_dir: Path, repo_id: str, log: Callable[[str], None]) -> None:
    """final/README.md again, its loading code naming ``repo_id`` (from the run's config.yaml and
    metrics.jsonl). A card that is not the one mmalign wrote (edited by hand) is left as it is."""
    from mmalign_hub.card import CARD, model_card, write_model_card
    from mmalign_runs.metrics_file import read_metrics

    config_file, card = run_dir / "config.yaml", run_dir / "final" / CARD
    if not config_file.is_file():
        log(f"note: {run_dir} has no config.yaml: final/ is uploaded with the model card it holds, if any")
        return
    config = yaml.safe_load(config_file.read_text())
    metrics = run_dir / "metrics.jsonl"
    history = read_metrics(metrics) if metrics.is_file() else []
    if card.is_file():
        written = {model_card(config, history, run_dir / "final", ref)
                   for ref in (str(Path(config["output_dir"]) / "final"), repo_id)}
        if card.read_text() not in written:
            log(f"note: {card} is not the card mmalign wrote (edited?): it is uploaded as it is")
            return
    write_model_card(run_dir / "final", config, history, repo_id)


class PushCallback(Callback):
    """``train.push_to_hub``: uploads ``final/`` when training ends. The token is checked when the
    run starts, so a missing one is said before training rather than after it."""

    def __init__(self, output_dir: Path, *, cfg: Any = None):
        if cfg is None or not cfg.train.push_to_hub:
            raise ConfigError("train.callbacks: 'push_to_hub' uploads final/ to train.push_to_hub, which is "
                              "not set. Set train.push_to_hub: ORG/NAME instead of listing the callback.")
        self.out, self.repo_id = Path(output_dir), cfg.train.push_to_hub
        try:
            require_token()
        except ConfigError as e:
            raise ConfigError(f"train.push_to_hub: {e}") from None

    def on_train_end(self, history: list[dict]) -> None:
        push_run(self.out, self.repo_id)


def add_push_arguments(parser) -> None:
    parser.add_argument("run_dir", help="the output_dir of a finished run (its final/ is uploaded)")
    parser.add_argument("repo_id", help="the Hub model repository, ORG/NAME (created if it does not exist)")
    parser.add_argument("--private", action="store_true", help="create the repository private")


def push_command(args) -> None:
    push_run(args.run_dir, args.repo_id, private=True if args.private else None,
             log=lambda message: print(message, file=sys.stderr))
