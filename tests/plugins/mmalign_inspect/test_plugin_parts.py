"""What `mmalign check`, `eval` and `score` cannot rebuild from a config that names a plugin's data
source or reference strategy: check leaves the data to the source (its check= ran), eval and score
refuse rather than compute rewards or read records other than training's."""

from __future__ import annotations

import pytest
from conftest import base_config

import mmalign
from mmalign.errors import ConfigError
from mmalign_inspect.check import read_data
from mmalign_inspect.trained_run import refuse_plugin_parts


def test_check_leaves_a_plugins_source_to_the_source(tmp_path, tokenizer_dir, pairs_file):
    cfg = mmalign.as_config(base_config(tmp_path, tokenizer_dir, pairs_file, data={"source": "warehouse"}))
    assert read_data(cfg) == ["  data: read by data.source 'warehouse' (a plugin's source), not by check"]


@pytest.mark.parametrize("sections,words", [
    ({"reference": {"strategy": "served"}}, "reference.strategy: 'served' is a plugin's strategy"),
    ({"data": {"source": "warehouse"}}, "data.eval: mmalign eval and score read held-out records from a file"),
])
def test_eval_and_score_refuse_what_they_would_rebuild_differently(tmp_path, tokenizer_dir, pairs_file, sections,
                                                                   words):
    with pytest.raises(ConfigError, match=words):
        refuse_plugin_parts(mmalign.as_config(base_config(tmp_path, tokenizer_dir, pairs_file, **sections)))
    refuse_plugin_parts(mmalign.as_config(base_config(tmp_path, tokenizer_dir, pairs_file)))  # built-in: fine
    given = base_config(tmp_path, tokenizer_dir, pairs_file, data={"source": "warehouse", "eval": str(pairs_file)})
    refuse_plugin_parts(mmalign.as_config(given))  # a file to evaluate on: read as such
